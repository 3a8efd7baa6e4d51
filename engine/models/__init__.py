"""Neural networks of the LatentSync stack (the U-Net; VAE helpers live in engine.models.vae)."""

from engine.models.unet import LatentSyncUNet
from engine.models.unet_config import official_unet_config, tiny_unet_config

__all__ = ["LatentSyncUNet", "official_unet_config", "tiny_unet_config"]
