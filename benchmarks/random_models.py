"""Random-weight models for benchmarks: a micro model folder for long CPU runs, official-size networks in memory.

Neither is a lip-sync model. `micro` shrinks the tiny-random VAE (and the U-Net's last level) so a
several-minute input finishes on a loaded CPU (memory against input length does not depend
on network size); `official` builds the real-size U-Net, VAE and Whisper encoder with random
init straight on the device (no 3 GB checkpoint written) for timing on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

MICRO = "micro-random"
OFFICIAL_RANDOM = "official-random"
MICRO_SEED = 1247
MICRO_CHANNELS = 32  # every U-Net level (tiny-random: 32, 32, 32, 64; motion-module norms need 32)
MICRO_VAE_CHANNELS = 8  # every VAE level (tiny-random: 8, 8, 16, 16)
MICRO_GROUPS = 4  # GroupNorm groups, divides both channel counts


def micro_unet_config() -> dict:
    """The tiny U-Net config with 32 channels everywhere (same blocks, attention and motion modules)."""
    from engine.models import tiny_unet_config

    cfg = tiny_unet_config()
    cfg["block_out_channels"] = [MICRO_CHANNELS] * len(cfg["block_out_channels"])
    return cfg


def micro_vae_config() -> dict:
    """The tiny VAE config with 8 channels at every level."""
    from engine.models.vae import tiny_vae_config

    cfg = tiny_vae_config()
    cfg["block_out_channels"] = [MICRO_VAE_CHANNELS] * len(cfg["block_out_channels"])
    cfg["norm_num_groups"] = MICRO_GROUPS
    return cfg


def write_micro_model(out_dir: str | os.PathLike, *, resolution: int = 256, seed: int = MICRO_SEED) -> Path:
    """A local model folder in the layout `engine.weights.load_models` reads (is_random, no hashes)."""
    from engine.audio import random_whisper_state_dict, tiny_whisper_dims, write_whisper_checkpoint
    from engine.models import LatentSyncUNet
    from engine.models.vae import build_vae
    from engine.weights.checkpoints import write_json, write_official_unet_checkpoint, write_safetensors

    out = Path(out_dir)
    unet_cfg, vae_cfg = micro_unet_config(), micro_vae_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = LatentSyncUNet.from_config(unet_cfg)
        vae = build_vae(vae_cfg)
    write_official_unet_checkpoint(unet.state_dict(), out / "latentsync_unet.pt")
    write_json(unet_cfg, out / "unet_config.json")
    write_json({"_class_name": "AutoencoderKL", **vae_cfg}, out / "vae" / "config.json")
    write_safetensors({k: v.contiguous() for k, v in vae.state_dict().items()},
                      out / "vae" / "diffusion_pytorch_model.safetensors")
    dims = tiny_whisper_dims()
    write_whisper_checkpoint(out / "whisper" / "tiny.pt", dims, random_whisper_state_dict(dims, seed))
    write_json({"name": MICRO, "resolution": resolution, "is_random": True}, out / "engine.json")
    return out


def official_random_unet(*, device: torch.device | str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """The official LatentSync U-Net with random weights, built on `device` (every layer non-zero)."""
    from engine.models import LatentSyncUNet, official_unet_config
    from engine.weights.tiny import _randomise_zero_init

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            unet = LatentSyncUNet.from_config(official_unet_config())
    # conv_in/conv_out/motion proj_out start at zero: left so, outputs are zeros (deviations mean nothing, and
    # zeros run faster than real data on tensor cores)
    unet.load_state_dict(_randomise_zero_init(unet.state_dict(), torch.Generator().manual_seed(seed + 1)))
    return unet.to(dtype=dtype).eval().requires_grad_(False)


def official_random_vae(*, device: torch.device | str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """sd-vae-ft-mse's architecture (diffusers AutoencoderKL) with diffusers' random init, on `device`."""
    from engine.models.vae import build_vae, official_vae_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            vae = build_vae(official_vae_config())
    return torch.nn.Module.to(vae, dtype=dtype).eval().requires_grad_(False)


def official_random_models(*, device: torch.device | str, dtype: torch.dtype, resolution: int, seed: int = 0):
    """LoadedModels of the official U-Net, VAE and Whisper-tiny shapes with random init, built on `device`."""
    from engine.audio import load_whisper_encoder, official_whisper_tiny_dims, random_whisper_state_dict
    from engine.models import official_unet_config
    from engine.weights import LoadedModels

    dims = official_whisper_tiny_dims()
    encoder = load_whisper_encoder({"dims": dims, "model_state_dict": random_whisper_state_dict(dims, seed)})
    return LoadedModels(
        name=OFFICIAL_RANDOM, resolution=resolution,
        unet=official_random_unet(device=device, dtype=dtype, seed=seed),
        vae=official_random_vae(device=device, dtype=dtype, seed=seed), audio_encoder=encoder.to(device),
        is_random=True, unet_config=official_unet_config(),
    )
