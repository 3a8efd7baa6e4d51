"""Build the three networks from resolved files with strict, pickle-free loading."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engine.errors import CheckpointError, InvalidInputError
from engine.weights.checkpoints import check_finite, check_state_dict, read_checkpoint, read_state_dict, verify_sha256
from engine.weights.files import ModelFiles, read_json_object, resolve_model
from engine.weights.registry import RESOLUTIONS, VAE_CONFIG_FILE, VAE_WEIGHTS_FILE

log = logging.getLogger(__name__)

VAE_LEGACY_WEIGHTS_FILE = "diffusion_pytorch_model.bin"
COMPUTED_BUFFER_SUFFIX = ".pos_encoder.pe"  # deterministic sinusoid tables, recomputed when absent
# Old diffusers VAE attention names (sd-vae-ft-mse's hub file predates the rename) -> current names.
_VAE_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class LoadedModels:
    """The three networks of one LatentSync model, on one device."""

    name: str
    resolution: int
    unet: torch.nn.Module  # LatentSyncUNet
    vae: torch.nn.Module  # diffusers AutoencoderKL
    audio_encoder: torch.nn.Module  # WhisperAudioEncoder (fp32)
    is_random: bool
    unet_config: dict


def _has_meta(module: torch.nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def _meta_unet(config: dict):
    from engine.models import LatentSyncUNet

    with torch.device("meta"):
        return LatentSyncUNet.from_config(config)


def _checked_unet_state(path: str | os.PathLike, skeleton: torch.nn.Module) -> dict[str, Tensor]:
    from engine.models.unet_motion import PositionalEncoding

    state = read_state_dict(path)
    expected = skeleton.state_dict()
    computed = [k for k in expected if k.endswith(COMPUTED_BUFFER_SUFFIX) and k not in state]
    for key in computed:
        _, max_len, dim = expected[key].shape  # [1, max_len, C]
        state[key] = PositionalEncoding(dim, max_len).pe
    if computed:
        log.info("%s: %d temporal position tables not stored; computed them", path, len(computed))
    check_state_dict(state, expected, source=path)
    return state


def read_unet_state_dict(path: str | os.PathLike, config: dict) -> dict[str, Tensor]:
    """The U-Net tensors of `path` (official .pt or safetensors), strictly checked against `config`.

    Unlike the official loader (which silently drops conv_in/conv_out/attn2.to_k/to_v tensors whose
    dims disagree and ignores missing/unexpected keys), any missing, unexpected or mis-shaped key is a
    CheckpointError naming the file, the key, the expected and the found shape. `global_step` is ignored.
    The one leniency: absent motion-module position tables (`...pos_encoder.pe`, fixed sinusoids that
    are not learned) are computed, since whether the released files store them is unverified.
    """
    return _checked_unet_state(path, _meta_unet(config))


def load_unet_checkpoint(path: str | os.PathLike, config: dict, *, device: str | torch.device = "cpu",
                         dtype: torch.dtype | None = None):
    """A LatentSyncUNet (eval, no grad) built from `config` with the weights of `path`, strict (see above)."""
    from engine.models import LatentSyncUNet

    model = _meta_unet(config)
    state = _checked_unet_state(path, model)
    model.load_state_dict(state, strict=True, assign=True)  # no full-size random init, global RNG untouched
    if _has_meta(model):  # non-persistent buffers are not in the checkpoint: build them for real
        with torch.random.fork_rng(devices=[]):
            model = LatentSyncUNet.from_config(config)
        model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _rename_legacy_vae_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        head, _, name = prefix.rpartition(".")
        if ".attentions." in key and name in _VAE_LEGACY_ATTENTION:
            key = f"{head}.{_VAE_LEGACY_ATTENTION[name]}.{leaf}"
            if value.ndim == 4 and value.shape[2:] == (1, 1):  # 1x1 conv weights of very old files
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def read_vae_folder(vae_dir: str | os.PathLike) -> tuple[dict, dict[str, Tensor]]:
    """(config, state dict with current diffusers key names) of a diffusers AutoencoderKL folder."""
    vae_dir = Path(vae_dir)
    config = read_json_object(vae_dir / VAE_CONFIG_FILE)
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise CheckpointError(f"{vae_dir / VAE_CONFIG_FILE}: _class_name: expected AutoencoderKL, found {config['_class_name']}")
    weights = vae_dir / VAE_WEIGHTS_FILE
    if not weights.exists() and (vae_dir / VAE_LEGACY_WEIGHTS_FILE).exists():
        weights = vae_dir / VAE_LEGACY_WEIGHTS_FILE
    return config, _rename_legacy_vae_keys(read_state_dict(weights, container_key=None))


def load_vae(vae_dir: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers AutoencoderKL from a folder (config.json + safetensors/bin), strict, scaling 0.18215 / shift 0."""
    from engine.models.vae import build_vae

    config, state = read_vae_folder(vae_dir)
    with torch.device("meta"):
        vae = build_vae(config)
    check_state_dict(state, vae.state_dict(), source=Path(vae_dir) / VAE_WEIGHTS_FILE)
    vae.load_state_dict(state, strict=True, assign=True)  # no random init, global RNG untouched
    if _has_meta(vae):
        raise CheckpointError(f"{vae_dir}: expected every VAE tensor in the checkpoint, found some left uninitialised")
    # nn.Module.to: diffusers' ModelMixin.to only adds a warning here (AutoencoderKL keeps nothing in fp32).
    return torch.nn.Module.to(vae, device=device, dtype=dtype)


def load_whisper(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """The fp32 WhisperAudioEncoder of an openai `tiny.pt` or a converted `encoder.safetensors`."""
    from engine.audio import load_whisper_encoder

    payload = read_checkpoint(path)  # the same safe reader and errors as every other file
    if Path(path).suffix == ".safetensors":
        check_finite(payload, source=path)
        payload = path  # dims live in the file's metadata
    elif not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected {{'dims', 'model_state_dict'}}, found {type(payload).__name__}")
    elif isinstance(payload.get("model_state_dict"), dict):
        check_finite(payload["model_state_dict"], source=path)
    with torch.random.fork_rng(devices=[]):  # the encoder is built with a random init first
        encoder = load_whisper_encoder(payload)
    return encoder.to(device)


def pick_resolution(files: ModelFiles, resolution: int | None) -> int:
    if resolution is not None and resolution not in RESOLUTIONS:
        raise InvalidInputError(f"resolution: expected one of {RESOLUTIONS}, found {resolution}")
    if resolution is None and files.resolution is None:
        raise InvalidInputError(
            f"resolution of {files.name}: expected it in engine.json or as an argument (256 for 1.5, 512 for 1.6), found neither"
        )
    if resolution is not None and files.resolution is not None and resolution != files.resolution:
        log.warning("%s was trained at %d px; running it at %d px as asked", files.name, files.resolution, resolution)
    return int(resolution if resolution is not None else files.resolution)


def load_models(name_or_dir: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                offline: bool = False, resolution: int | None = None, cache_dir: str | os.PathLike | None = None,
                verify_hashes: bool = True) -> LoadedModels:
    """Resolve and load U-Net, VAE and Whisper encoder of 'latentsync-1.6' | 'latentsync-1.5' | 'tiny-random' | a directory.

    U-Net and VAE are cast to `dtype`; the Whisper encoder stays fp32. Hashes listed in a folder's
    engine.json are verified first (`verify_hashes`). Every failure is a CheckpointError or
    InvalidInputError that names the file.
    """
    files = resolve_model(name_or_dir, offline=offline, cache_dir=cache_dir)
    res = pick_resolution(files, resolution)
    if verify_hashes:
        for path, digest in files.sha256.items():
            verify_sha256(path, digest)
    if files.is_random:
        log.warning("model %s has RANDOM weights: the mouth region of the output is meaningless", files.name)
    unet = load_unet_checkpoint(files.unet_path, files.unet_config, device=device, dtype=dtype)
    vae = load_vae(files.vae_dir, device=device, dtype=dtype)
    audio_encoder = load_whisper(files.whisper_path, device=device)
    log.info("loaded %s (%d px, %s, %s) from %s", files.name, res, dtype, device, files.unet_path.parent)
    return LoadedModels(
        name=files.name, resolution=res, unet=unet, vae=vae, audio_encoder=audio_encoder,
        is_random=files.is_random, unet_config=dict(files.unet_config),
    )
