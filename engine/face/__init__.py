"""Face path of the official pipeline: alignment crop, fixed mouth mask, and paste-back (restore)."""

from engine.face.align import CropGeometry, FaceAligner
from engine.face.mask import load_fixed_mask, mask_to_latent, prepare_masks_and_masked_images
from engine.face.restore import restore_batch

__all__ = [
    "CropGeometry",
    "FaceAligner",
    "load_fixed_mask",
    "mask_to_latent",
    "prepare_masks_and_masked_images",
    "restore_batch",
]
