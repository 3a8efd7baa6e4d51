"""The `tiny-random` preset: small seeded random models written in the official file layouts.

They exist to exercise every code path quickly (CI, smoke tests). Their output mouth region is
meaningless coloured noise: they are NOT a lip-sync model.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.media.paths import default_mode
from engine.weights.checkpoints import sha256_file, write_json, write_official_unet_checkpoint, write_safetensors
from engine.weights.files import ENGINE_JSON, UNET_CONFIG_JSON, VAE_DIR, read_json_object, engine_cache_dir
from engine.weights.registry import TINY_RANDOM, VAE_CONFIG_FILE, VAE_WEIGHTS_FILE

log = logging.getLogger(__name__)

TINY_VERSION = 2  # bump when the generated files change; older caches are rebuilt
TINY_SEED = 1247
TINY_RESOLUTION = 256
ZERO_INIT_STD = 0.02  # bias scale for parameters the architecture initialises to zero
TINY_WARNING = "tiny-random: random weights for testing; the generated mouth region is meaningless noise"
UNET_FILE = "latentsync_unet.pt"
WHISPER_FILE = "whisper/tiny.pt"


def _randomise_zero_init(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Replace all-zero parameters (conv_in/conv_out/proj_out are zero-initialised) so every layer matters."""
    out = {}
    for key, value in state.items():
        if value.is_floating_point() and value.numel() and not value.any():
            fan_in = math.prod(value.shape[1:]) if value.ndim > 1 else 0
            scale = 1.0 / math.sqrt(fan_in) if fan_in else ZERO_INIT_STD
            value = scale * torch.randn(value.shape, generator=generator, dtype=value.dtype)
        out[key] = value.detach().clone()
    return out


def tiny_unet_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """Seeded random weights of the tiny U-Net config, in the official key layout (global RNG untouched)."""
    from engine.models import LatentSyncUNet, tiny_unet_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentSyncUNet.from_config(tiny_unet_config())
    return _randomise_zero_init(model.state_dict(), torch.Generator().manual_seed(seed + 1))


def tiny_vae_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    from engine.models.vae import build_vae, tiny_random_vae_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_vae(tiny_random_vae_config())
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def write_tiny_random(out_dir: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Write the tiny-random model into `out_dir` in the official layouts (+ engine.json with hashes)."""
    from engine.audio import random_whisper_state_dict, tiny_whisper_dims, write_whisper_checkpoint
    from engine.models import tiny_unet_config
    from engine.models.vae import tiny_random_vae_config

    out = Path(out_dir)
    write_official_unet_checkpoint(tiny_unet_state_dict(seed), out / UNET_FILE)
    write_json(tiny_unet_config(), out / UNET_CONFIG_JSON)
    write_json({"_class_name": "AutoencoderKL", **tiny_random_vae_config()}, out / VAE_DIR / VAE_CONFIG_FILE)
    write_safetensors(tiny_vae_state_dict(seed), out / VAE_DIR / VAE_WEIGHTS_FILE)
    dims = tiny_whisper_dims()
    write_whisper_checkpoint(out / WHISPER_FILE, dims, random_whisper_state_dict(dims, seed))
    files = [UNET_FILE, WHISPER_FILE, f"{VAE_DIR}/{VAE_WEIGHTS_FILE}"]
    write_json(
        {
            "name": TINY_RANDOM,
            "resolution": TINY_RESOLUTION,
            "is_random": True,
            "tiny_version": TINY_VERSION,
            "seed": seed,
            "warning": TINY_WARNING,
            "sha256": {rel: sha256_file(out / rel) for rel in files},
        },
        out / ENGINE_JSON,
    )
    return out


def _is_complete(path: Path) -> bool:
    if not (path / ENGINE_JSON).is_file():
        return False
    try:
        meta = read_json_object(path / ENGINE_JSON)
    except CheckpointError:
        return False
    return meta.get("tiny_version") == TINY_VERSION and all((path / rel).is_file() for rel in meta.get("sha256", {}))


def ensure_tiny_random(cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny-random model folder under `cache_dir` (default engine_cache_dir()), written once.

    Built in a temporary sibling folder and renamed into place, so concurrent callers never see a
    half-written model; the loser of a race discards its copy.
    """
    root = Path(cache_dir).expanduser() if cache_dir else engine_cache_dir()
    target = root / TINY_RANDOM
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    log.info("tiny-random: generating its small random-weight models in %s (once)", target)  # loading warns
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_RANDOM}.", dir=root))
    tmp.chmod(default_mode(directory=True))  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write_tiny_random(tmp)
        if target.exists() and not _is_complete(target):  # stale version or a broken copy
            stale = Path(tempfile.mkdtemp(prefix=f".{TINY_RANDOM}.stale.", dir=root))
            os.replace(target, stale / TINY_RANDOM)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
