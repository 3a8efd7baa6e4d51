"""Evaluator checkpoints: hash-checked download, pickle-free loading, strict key matching.

Real SyncNet weights come as torch pickles (`syncnet_v2.model`, `stable_syncnet.pt`); they are
loaded with `torch.load(weights_only=True)`, whose restricted unpickler rebuilds only tensors,
storages and (Ordered)dicts and refuses any other global, so a malicious pickle never runs.
Golden test weights are safetensors with int8 conv/linear weights and per-key power-of-two scales.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError

log = logging.getLogger(__name__)

INT8_SCALE_METADATA_KEY = "int8_scale_exp"  # JSON {key: e}: value = q * 2**e
STATE_DICT_WRAPPERS = ("state_dict", "model", "net")  # checkpoint dicts that wrap the weights
_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing


@dataclass(frozen=True)
class CheckpointSpec:
    """Where an evaluator checkpoint lives on the Hub and what its bytes must hash to."""

    name: str
    repo_id: str
    filename: str
    sha256: str | None = None  # pinned hash; None -> the Hub's LFS sha256 is checked and recorded


SYNCNET_V2 = CheckpointSpec("syncnet_v2", "ByteDance/LatentSync-1.5", "auxiliary/syncnet_v2.model")
STABLE_SYNCNET = CheckpointSpec("stable_syncnet", "ByteDance/LatentSync-1.6", "stable_syncnet.pt")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_sha256(spec: CheckpointSpec) -> str | None:
    """The sha256 the Hub declares for an LFS file (its etag), or None when unknown."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url(spec.repo_id, spec.filename))
    etag = (meta.etag or "").strip('"')
    return etag if len(etag) == 64 else None


def fetch_checkpoint(spec: CheckpointSpec, *, cache_dir: str | Path | None = None, offline: bool = False) -> Path:
    """Download `spec` on first use (or find it in the cache) and check its sha256.

    The expected hash is `spec.sha256` when pinned, else the Hub's LFS hash, recorded beside the file
    (`<file>.sha256`) on first download so a later corruption of the cached file is detected offline.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(spec.repo_id, spec.filename, cache_dir=cache_dir, local_files_only=offline))
    except Exception as exc:  # network, auth, missing file: all the same to the caller
        raise CheckpointError(
            f"{spec.name}: expected {spec.repo_id}/{spec.filename} (downloadable or cached), found {exc}"
        ) from exc
    record = path.with_name(path.name + ".sha256")
    expected = spec.sha256 or (record.read_text().strip() if record.exists() else None)
    if expected is None and not offline:
        expected = _hub_sha256(spec)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise CheckpointError(f"{spec.name} {path}: expected sha256 {expected}, found {actual}")
    if expected is None:
        log.warning("%s: no known sha256; recording %s for later checks", spec.name, actual)
    if not record.exists():
        try:
            record.write_text(actual + "\n")
        except OSError:  # read-only cache: the check above already ran
            pass
    return path


def check_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise CheckpointError(f"{path}: expected sha256 {expected.lower()}, found {actual}")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint object (possibly wrapped in {'state_dict': ...})."""
    for _ in range(2):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in STATE_DICT_WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a non-empty mapping of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected only str -> tensor entries, found non-tensor entries {bad[:5]}")
    return dict(obj)


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a torch checkpoint (zip or legacy format) without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: expected a file, found nothing at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: expected a weights-only torch checkpoint (tensors in dicts), found one that the "
            f"restricted unpickler refuses or cannot read: {str(exc).splitlines()[0][:300]}"
        ) from exc
    return _unwrap(obj, path)


def load_int8_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Golden weights: int8 tensors listed in metadata `int8_scale_exp` become float32 q * 2**e (exact)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # truncated file, git-lfs pointer, not safetensors
        raise CheckpointError(f"{path}: expected a readable safetensors file, found {exc}") from exc
    scales = json.loads(metadata.get(INT8_SCALE_METADATA_KEY, "{}"))
    for key, exponent in scales.items():
        if key not in state or state[key].dtype != torch.int8:
            raise CheckpointError(f"{path}: expected int8 tensor {key!r} for its scale, found none")
        state[key] = state[key].to(torch.float32) * (2.0 ** int(exponent))
    stray = [k for k, v in state.items() if v.dtype == torch.int8]
    if stray:
        raise CheckpointError(f"{path}: expected a scale exponent for every int8 tensor, missing {stray[:5]}")
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Any supported weight file: safetensors (plain or int8-scaled) or a weights-only torch pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_int8_safetensors(path)
    return load_torch_state_dict(path)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """Copy `state` into `module`; every key and shape must match, else CheckpointError (module untouched)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: expected the {type(module).__name__} keys, found {len(missing)} missing "
            f"{missing[:5]} and {len(unexpected)} unexpected {unexpected[:5]}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: key {key!r} expected shape {tuple(own[key].shape)}, found {tuple(value.shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return module
