"""The image VAE (diffusers AutoencoderKL, sd-vae-ft-mse) with the official encode/decode conventions."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.constants import LATENT_DOWNSAMPLE, VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from engine.errors import InvalidInputError

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers DiagonalGaussianDistribution clamp
LATENT_CHANNELS = 4

_ENCODER_BLOCKS = ["DownEncoderBlock2D"] * 4
_DECODER_BLOCKS = ["UpDecoderBlock2D"] * 4


def official_vae_config() -> dict:
    """config.json of stabilityai/sd-vae-ft-mse (diffusers defaults fill the keys it leaves out)."""
    return {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": list(_ENCODER_BLOCKS),
        "up_block_types": list(_DECODER_BLOCKS),
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": VAE_SCALING_FACTOR,
        "shift_factor": VAE_SHIFT_FACTOR,
    }


def tiny_vae_config() -> dict:
    """The tiny test VAE of golden/e2e_demo1/weights/vae/config.json (8x downsampling, 4 latent channels)."""
    return {
        "act_fn": "silu",
        "block_out_channels": [32, 64, 64, 64],
        "down_block_types": list(_ENCODER_BLOCKS),
        "up_block_types": list(_DECODER_BLOCKS),
        "force_upcast": True,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": 16,
        "sample_size": 256,
        "scaling_factor": VAE_SCALING_FACTOR,
        "shift_factor": VAE_SHIFT_FACTOR,
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }


# tiny-random's VAE: the golden tiny layout (8x downsampling, 4 latent channels, mid-block attention) made narrower.
# Tests and the CPU demo spend most of their device time in the VAE at 256x256 (two encodes and one decode per
# frame); these widths make it about 5-10x cheaper than the golden tiny VAE while every code path stays the same.
TINY_RANDOM_VAE_OVERRIDES = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}


def tiny_random_vae_config() -> dict:
    """The VAE config of the `tiny-random` preset (not a golden fixture's: see TINY_RANDOM_VAE_OVERRIDES)."""
    return {**tiny_vae_config(), **TINY_RANDOM_VAE_OVERRIDES}


def build_vae(config: dict):
    """An AutoencoderKL with random init from `config` (keys starting with '_' are ignored)."""
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = AutoencoderKL.from_config(cfg)
    # The official pipeline overrides these after loading, whatever the file says.
    vae.register_to_config(scaling_factor=VAE_SCALING_FACTOR, shift_factor=VAE_SHIFT_FACTOR)
    return vae.eval().requires_grad_(False)


def _vae_dtype_device(vae) -> tuple[torch.dtype, torch.device]:
    param = next(vae.parameters())
    return param.dtype, param.device


def check_latents(latents: Tensor) -> None:
    if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise InvalidInputError(f"VAE latents: expected [f,4,h,w], found {list(latents.shape)}")


def check_pixels(pixels: Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] % LATENT_DOWNSAMPLE or pixels.shape[3] % LATENT_DOWNSAMPLE:
        raise InvalidInputError(
            f"VAE pixels: expected [f,3,R,R] with R a multiple of {LATENT_DOWNSAMPLE}, found {list(pixels.shape)}"
        )


@torch.no_grad()
def vae_posterior(vae, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, std) of the posterior, unscaled, each [f,4,R/8,R/8], in the VAE dtype.

    `vae` is the AutoencoderKL module (the reference math; the pipeline calls the same network through
    `engine.backends.VaeRunner` on the engine core's device thread). `pixels` [f,3,R,R] in [-1,1] (any
    float dtype: cast to the VAE dtype, as the official pipeline does). std = exp(0.5 * clamp(logvar, -30, 20)).
    """
    check_pixels(pixels)
    dtype, device = _vae_dtype_device(vae)
    moments = vae.encode(pixels.to(device=device, dtype=dtype)).latent_dist.parameters  # [f,8,h,w]
    mean, logvar = torch.chunk(moments, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX))
    return mean, std


def posterior_sample(mean: Tensor, std: Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Scaled latents from a posterior: (mean + std * eps) * 0.18215, eps ~ N(0,1) drawn like diffusers.

    eps = randn(mean.shape) from `generator` (the global RNG of mean's device when None), in mean's dtype;
    a generator on another device draws there and the result is moved (diffusers `randn_tensor`).
    With sample=False the mode (mean) is used and nothing is drawn.
    """
    if sample:
        draw_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=draw_device, dtype=mean.dtype).to(mean.device)
        z = mean + std * eps
    else:
        z = mean
    return (z - VAE_SHIFT_FACTOR) * VAE_SCALING_FACTOR


def vae_encode(vae, pixels: Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Scaled latents [f,4,R/8,R/8] of `pixels` [f,3,R,R] in [-1,1], exactly as the official pipeline.

    Consumes one randn((f,4,R/8,R/8)) draw from `generator` (global RNG when None) when `sample`.
    """
    mean, std = vae_posterior(vae, pixels)
    return posterior_sample(mean, std, sample=sample, generator=generator)


@torch.no_grad()
def vae_decode(vae, latents: Tensor) -> Tensor:
    """Decoded images [f,3,R,R] (not clamped) from scaled latents [f,4,h,w], in the VAE dtype (AutoencoderKL)."""
    check_latents(latents)
    dtype, device = _vae_dtype_device(vae)
    z = latents.to(device=device, dtype=dtype) / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR
    return vae.decode(z).sample
