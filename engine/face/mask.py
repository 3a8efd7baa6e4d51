"""The fixed mouth mask and the U-Net's pixel, masked-pixel and mask inputs, as the official ImageProcessor builds them."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.constants import LATENT_DOWNSAMPLE
from engine.errors import InvalidInputError, expect

MASK_RESOURCE = "mask.png"  # packaged copy of the official latentsync/utils/mask.png (1 = keep, 0 = generate)
SUPPORTED_RESOLUTIONS = (256, 512)


@lru_cache(maxsize=4)
def fixed_mask_u8(resolution: int) -> np.ndarray:
    """mask.png (RGB) resized to [R,R,3] uint8 with cv2 INTER_LANCZOS4, as load_fixed_mask reads it."""
    expect(resolution in SUPPORTED_RESOLUTIONS, InvalidInputError, "resolution", SUPPORTED_RESOLUTIONS, resolution)
    data = resources.files("engine").joinpath("data", MASK_RESOURCE).read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    resized.setflags(write=False)
    return resized


def load_fixed_mask(resolution: int) -> torch.Tensor:
    """The official mask tensor: float64 [3,R,R] = Lanczos-resized mask.png / 255 (soft edges at 512)."""
    return torch.from_numpy(fixed_mask_u8(resolution).astype(np.float64) / 255.0).permute(2, 0, 1).contiguous()


def resize_uint8_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision `Resize((size,size), BICUBIC, antialias=True)` on uint8 [f,3,H,W]: f32 resample, clamp, round."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 255).round().to(torch.uint8)


def prepare_masks_and_masked_images(
    faces: torch.Tensor | np.ndarray, resolution: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official `prepare_masks_and_masked_images(faces, affine_transform=False)`.

    faces: uint8 [f,R,R,3] (HWC) or [f,3,R,R] (CHW); resized to `resolution` (default: their own size) with
    torchvision bicubic antialias. Returns (pixel [f,3,R,R] f32 in [-1,1], masked [f,3,R,R] f32,
    masks [f,1,R,R] f32). The official masked/masks are float64; here the product is taken in float64 and then
    rounded to float32, which equals the official values after its own cast to the (fp32/fp16) weight dtype.
    """
    faces = torch.as_tensor(faces)
    expect(faces.ndim == 4 and faces.dtype == torch.uint8 and 3 in (faces.shape[1], faces.shape[-1]),
           InvalidInputError, "faces", "uint8 [f,R,R,3] or [f,3,R,R]", f"{faces.dtype} {tuple(faces.shape)}")
    if faces.shape[-1] == 3 and faces.shape[1] != 3:
        faces = faces.permute(0, 3, 1, 2)  # [f,3,H,W]
    size = resolution if resolution is not None else int(faces.shape[-1])
    expect(size in SUPPORTED_RESOLUTIONS, InvalidInputError, "resolution", SUPPORTED_RESOLUTIONS, size)
    faces = resize_uint8_bicubic(faces.contiguous(), size)
    mask32, soft_index, soft_values = _mask_parts(size, faces.device)
    pixel = (faces / 255.0).sub_(0.5).mul_(2.0)  # [f,3,R,R] f32; == (x/255 - 0.5)/0.5 exactly (x2 is exact)
    masked = pixel * mask32  # exact where the mask is 0 or 1
    if soft_index.numel():  # soft edge pixels: the official float64 product, rounded once
        flat_pixel, flat_masked = pixel.view(len(faces), -1), masked.view(len(faces), -1)
        flat_masked[:, soft_index] = (flat_pixel[:, soft_index].double() * soft_values).float()
    masks = mask32[0:1].expand(len(faces), 1, size, size).contiguous()
    return pixel, masked, masks


@lru_cache(maxsize=8)
def _mask_parts(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask [3,R,R] f32, flat indices of its values strictly between 0 and 1, their float64 values)."""
    mask = load_fixed_mask(size)
    flat = mask.reshape(-1)
    soft_index = ((flat > 0) & (flat < 1)).nonzero().flatten()
    return mask.float().to(device), soft_index.to(device), flat[soft_index].to(device)


def mask_to_latent(masks: torch.Tensor) -> torch.Tensor:
    """Nearest downsample [f,1,R,R] -> [f,1,R/8,R/8] (F.interpolate's default picks pixel (8i, 8j))."""
    expect(masks.ndim == 4 and masks.shape[-1] % LATENT_DOWNSAMPLE == 0, InvalidInputError, "masks",
           f"[f,1,R,R] with R a multiple of {LATENT_DOWNSAMPLE}", tuple(masks.shape))
    return masks[..., ::LATENT_DOWNSAMPLE, ::LATENT_DOWNSAMPLE].contiguous()
