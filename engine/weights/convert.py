"""Convert any loadable model into a pickle-free safetensors folder that `load_models` reads back."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from engine.errors import CheckpointError, InvalidInputError
from engine.media.paths import check_not_input, check_output_dir, default_mode
from engine.weights.checkpoints import (
    check_finite,
    check_state_dict,
    read_checkpoint,
    sha256_file,
    verify_sha256,
    write_json,
    write_safetensors,
)
from engine.weights.files import ENGINE_JSON, UNET_CONFIG_JSON, UNET_FILES, VAE_DIR, WHISPER_FILES, resolve_model
from engine.weights.loader import pick_resolution, read_unet_state_dict, read_vae_folder
from engine.weights.registry import VAE_CONFIG_FILE, VAE_WEIGHTS_FILE

log = logging.getLogger(__name__)

FORMAT = "latentsync-engine/1"
UNET_SAFETENSORS = UNET_FILES[0]  # unet.safetensors
WHISPER_SAFETENSORS = WHISPER_FILES[0]  # whisper/encoder.safetensors
WHISPER_DIMS_KEY = "dims"  # safetensors metadata entry read by engine.audio.load_whisper_encoder
ENCODER_PREFIX = "encoder."


def _cast(state: Mapping[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def read_whisper_encoder_state(path: str | os.PathLike) -> tuple[dict, dict[str, Tensor]]:
    """(dims, encoder.* tensors in the openai layout) of a tiny.pt or a converted encoder.safetensors."""
    path = Path(path)
    state = read_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if WHISPER_DIMS_KEY not in metadata:
            raise CheckpointError(f"{path}: expected safetensors metadata {WHISPER_DIMS_KEY!r}, found {sorted(metadata)}")
        dims = json.loads(metadata[WHISPER_DIMS_KEY])
    else:
        if not isinstance(state, Mapping) or "dims" not in state or "model_state_dict" not in state:
            found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"{path}: expected {{'dims', 'model_state_dict'}}, found {found}")
        dims, state = dict(state["dims"]), state["model_state_dict"]
    return dims, {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}


def convert_model(name_or_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None,
                  offline: bool = False, resolution: int | None = None, cache_dir: str | os.PathLike | None = None,
                  overwrite: bool = False) -> Path:
    """Write `out_dir` = unet.safetensors + unet_config.json + vae/ + whisper/encoder.safetensors + engine.json.

    Every tensor is strictly checked first (the same checks as loading). U-Net and VAE are cast to
    `dtype` when given; the Whisper encoder keeps its stored dtype (the official loader copies it into
    fp32). The folder is built beside `out_dir` and renamed into place, so a failure leaves nothing.
    """
    from engine.audio import load_whisper_encoder
    from engine.models.vae import build_vae

    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"convert output {out}: expected a new or empty directory, found existing files")
    out = check_output_dir(out, what="convert --out")
    files = resolve_model(name_or_dir, offline=offline, cache_dir=cache_dir)
    sources = [("--model", name_or_dir)] if Path(name_or_dir).expanduser().is_dir() else []
    sources += [("model file", files.unet_path), ("model file", files.whisper_path), ("model folder", files.vae_dir)]
    check_not_input(out, sources, what="convert --out", directory=True)  # --overwrite would delete them
    res = pick_resolution(files, resolution)
    for path, digest in files.sha256.items():
        verify_sha256(path, digest)

    unet_state = _cast(read_unet_state_dict(files.unet_path, files.unet_config), dtype)
    vae_config, vae_state = read_vae_folder(files.vae_dir)
    with torch.device("meta"):
        vae_skeleton = build_vae(vae_config)
    check_state_dict(vae_state, vae_skeleton.state_dict(), source=files.vae_dir / VAE_WEIGHTS_FILE)
    dims, whisper_state = read_whisper_encoder_state(files.whisper_path)
    check_finite(whisper_state, source=files.whisper_path)
    load_whisper_encoder({"dims": dims, "model_state_dict": whisper_state})  # strict check of the encoder keys

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(default_mode(directory=True))  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write_safetensors(unet_state, tmp / UNET_SAFETENSORS)
        write_json(files.unet_config, tmp / UNET_CONFIG_JSON)
        write_json({"_class_name": "AutoencoderKL", **{k: v for k, v in vae_config.items() if not k.startswith("_")}},
                   tmp / VAE_DIR / VAE_CONFIG_FILE)
        write_safetensors(_cast(vae_state, dtype), tmp / VAE_DIR / VAE_WEIGHTS_FILE)
        write_safetensors(whisper_state, tmp / WHISPER_SAFETENSORS, metadata={WHISPER_DIMS_KEY: json.dumps(dims)})
        stored = [UNET_SAFETENSORS, f"{VAE_DIR}/{VAE_WEIGHTS_FILE}", WHISPER_SAFETENSORS]
        write_json(
            {
                "format": FORMAT,
                "name": files.name,
                "resolution": res,
                "is_random": files.is_random,
                "dtype": str(dtype).removeprefix("torch.") if dtype else "as stored",
                "source": str(name_or_dir),
                "sha256": {rel: sha256_file(tmp / rel) for rel in stored},
            },
            tmp / ENGINE_JSON,
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s", files.name, out)
    return out
