"""Resolve a model name or directory to the files to load: hub cache, local folder, or the tiny-random preset."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import CheckpointError, InvalidInputError
from engine.weights.fetch import hub_file, is_offline  # noqa: F401 - re-exported: the one fetch path
from engine.weights.registry import (
    MODELS,
    OFFICIAL_VAE_REPO,
    RESOLUTIONS,
    TINY_RANDOM,
    VAE_CONFIG_FILE,
    VAE_WEIGHTS_FILE,
    get_spec,
)

log = logging.getLogger(__name__)

# Local directory layout (the official checkpoints/ folder, plus what `engine convert` writes).
ENGINE_JSON = "engine.json"  # optional: {"name", "resolution", "is_random", "sha256": {relpath: hex}}
UNET_CONFIG_JSON = "unet_config.json"  # optional: the `model:` section; default = official
UNET_FILES = ("unet.safetensors", "latentsync_unet.pt")  # first found wins
WHISPER_FILES = ("whisper/encoder.safetensors", "whisper/tiny.pt")
VAE_DIR = "vae"  # optional diffusers AutoencoderKL folder; default = the hub VAE
ENGINE_CACHE_ENV = "LATENTSYNC_ENGINE_CACHE"


@dataclass(frozen=True)
class ModelFiles:
    """Everything `load_models` reads, as resolved paths; `sha256` lists hashes to verify before loading."""

    name: str
    resolution: int | None  # None: the source does not say (a bare local folder)
    unet_path: Path
    unet_config: dict
    whisper_path: Path
    vae_dir: Path
    is_random: bool = False
    sha256: dict[Path, str] = field(default_factory=dict)


def engine_cache_dir() -> Path:
    """Root of files this engine materialises itself (tiny-random): $LATENTSYNC_ENGINE_CACHE or ~/.cache/latentsync-engine."""
    env = os.environ.get(ENGINE_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "latentsync-engine"


def hub_vae_dir(*, offline: bool = False, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached snapshot folder of stabilityai/sd-vae-ft-mse holding config.json and the safetensors."""
    config = hub_file(OFFICIAL_VAE_REPO, VAE_CONFIG_FILE, offline=offline, cache_dir=cache_dir)
    weights = hub_file(OFFICIAL_VAE_REPO, VAE_WEIGHTS_FILE, offline=offline, cache_dir=cache_dir)
    if weights.parent != config.parent:  # different snapshots: should not happen for one revision
        raise CheckpointError(f"{OFFICIAL_VAE_REPO}: expected config and weights in one snapshot, found {config.parent} and {weights.parent}")
    return config.parent


def _default_unet_config() -> dict:
    from engine.models import official_unet_config

    return official_unet_config()


def read_json_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a JSON object, found unreadable content ({exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _first_existing(root: Path, candidates: tuple[str, ...], what: str) -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise CheckpointError(f"{root}: expected a {what} file ({' or '.join(candidates)}), found none")


def _resolve_local(root: Path, *, offline: bool, cache_dir) -> ModelFiles:
    meta = read_json_object(root / ENGINE_JSON) if (root / ENGINE_JSON).is_file() else {}
    resolution = meta.get("resolution")
    if resolution is not None and resolution not in RESOLUTIONS:
        raise CheckpointError(f"{root / ENGINE_JSON}: resolution: expected one of {RESOLUTIONS}, found {resolution!r}")
    if (root / UNET_CONFIG_JSON).is_file():
        unet_config = read_json_object(root / UNET_CONFIG_JSON)
        unet_config = unet_config.get("model", unet_config)  # accept a whole YAML-like config too
    else:
        unet_config = _default_unet_config()
    # The folder's own files first (an empty folder names the U-Net), the hub VAE only when they are there.
    unet_path = _first_existing(root, UNET_FILES, "U-Net checkpoint")
    whisper_path = _first_existing(root, WHISPER_FILES, "Whisper checkpoint")
    vae_dir = root / VAE_DIR if (root / VAE_DIR / VAE_CONFIG_FILE).is_file() else hub_vae_dir(offline=offline, cache_dir=cache_dir)
    hashes = meta.get("sha256", {})
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{root / ENGINE_JSON}: sha256: expected {{path: hex}}, found {type(hashes).__name__}")
    return ModelFiles(
        name=str(meta.get("name", root)),
        resolution=resolution,
        unet_path=unet_path,
        unet_config=unet_config,
        whisper_path=whisper_path,
        vae_dir=vae_dir,
        is_random=bool(meta.get("is_random", False)),
        sha256={root / rel: str(h) for rel, h in hashes.items()},
    )


def resolve_model(name_or_dir: str | os.PathLike, *, offline: bool = False,
                  cache_dir: str | os.PathLike | None = None) -> ModelFiles:
    """Files for 'latentsync-1.6' | 'latentsync-1.5' (HF hub cache) | 'tiny-random' | a local directory.

    `cache_dir`: the HF cache for hub models, or the root for tiny-random (default `engine_cache_dir()`).
    `offline` (or HF_HUB_OFFLINE=1) never touches the network; missing files raise CheckpointError.
    """
    name = str(name_or_dir)
    if name == TINY_RANDOM:
        from engine.weights.tiny import ensure_tiny_random

        return _resolve_local(ensure_tiny_random(cache_dir), offline=offline, cache_dir=None)
    path = Path(name).expanduser()
    if path.is_dir():
        return _resolve_local(path, offline=offline, cache_dir=cache_dir)
    if name not in MODELS:
        if path.exists():
            raise InvalidInputError(f"model: expected a model name or a directory, found the file {path}")
        get_spec(name)  # raises InvalidInputError listing the known names
    spec = get_spec(name)
    fetch = dict(revision=spec.revision, offline=offline, cache_dir=cache_dir)
    return ModelFiles(
        name=spec.name,
        resolution=spec.resolution,
        unet_path=hub_file(spec.unet_repo, spec.unet_file, **fetch),
        unet_config=_default_unet_config(),
        whisper_path=hub_file(spec.unet_repo, spec.whisper_file, **fetch),
        vae_dir=hub_vae_dir(offline=offline, cache_dir=cache_dir),
    )
