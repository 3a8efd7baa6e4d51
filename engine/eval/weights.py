"""Evaluator checkpoints: hash-checked download, loading without running pickled code, strict key matching.

Real SyncNet weights come as torch pickles (`syncnet_v2.model`, `stable_syncnet.pt`); they are read by
`engine.weights.checkpoints` with `torch.load(weights_only=True)`, whose restricted unpickler rebuilds only
tensors, storages and (Ordered)dicts and refuses any other global, so a malicious pickle never runs.
A pickled whole `nn.Module` falls back to `module_pickle`, which is just as inert.
Golden test weights are safetensors with int8 conv/linear weights and per-key power-of-two scales.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.weights.checkpoints import check_state_dict, read_safetensors, read_torch_file
from engine.weights.fetch import sha256_file  # noqa: F401 - the one hash helper, re-exported for callers

log = logging.getLogger(__name__)

INT8_SCALE_METADATA_KEY = "int8_scale_exp"  # JSON {key: e}: value = q * 2**e
STATE_DICT_WRAPPERS = ("state_dict", "model", "net")  # checkpoint dicts that wrap the weights
OPTIONAL_KEY_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class CheckpointSpec:
    """Where an evaluator checkpoint lives on the Hub and what its bytes must hash to."""

    name: str
    repo_id: str
    filename: str
    sha256: str | None = None  # pinned hash; None -> the Hub's LFS sha256 is checked and recorded


# Repos as published (unverified from here: the hub is unreachable); the auxiliary/ folder with the
# evaluator's SyncNet is part of the original ByteDance/LatentSync checkpoint repo.
SYNCNET_V2 = CheckpointSpec("syncnet_v2", "ByteDance/LatentSync", "auxiliary/syncnet_v2.model")
STABLE_SYNCNET = CheckpointSpec("stable_syncnet", "ByteDance/LatentSync-1.6", "stable_syncnet.pt")


def fetch_checkpoint(spec: CheckpointSpec, *, cache_dir: str | Path | None = None, offline: bool = False) -> Path:
    """Download `spec` on first use (or find it in the cache) and check its sha256.

    The expected hash is `spec.sha256` when pinned, else the one recorded beside the file on first use
    (`<file>.sha256`, see engine.weights.fetch.checked_or_recorded), else the Hub's LFS hash.
    """
    from engine.weights.fetch import checked_or_recorded, hub_sha256
    from engine.weights.files import hub_file

    # the evaluator's networks: tiny-random (a pipeline model) does not replace them; engine.eval.inputs adds the
    # options that do (a local copy, --no-syncnet, --random-weights)
    path = hub_file(spec.repo_id, spec.filename, offline=offline, cache_dir=cache_dir,
                    advice="a local copy of the file replaces the download")
    return checked_or_recorded(path, spec.sha256, what=spec.name,
                               second_opinion=lambda: hub_sha256(spec.repo_id, spec.filename, offline=offline))


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
    """Tensors of a torch checkpoint (zip or legacy format, state dict or whole module); no pickled code runs."""
    path = Path(path)
    try:
        obj = read_torch_file(path)
    except CheckpointError as exc:
        if not isinstance(exc.__cause__, pickle.UnpicklingError):
            raise
        from engine.eval.module_pickle import load_module_pickle  # names a class: maybe a whole module

        log.info("%s: not a plain state dict; reading it as a pickled module with inert stubs", path)
        obj = load_module_pickle(path)
    return _unwrap(obj, path)


def load_int8_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Golden weights: int8 tensors listed in metadata `int8_scale_exp` become float32 q * 2**e (exact)."""
    from safetensors import safe_open

    state = read_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        scales = json.loads((handle.metadata() or {}).get(INT8_SCALE_METADATA_KEY, "{}"))
    for key, exponent in scales.items():
        if key not in state or state[key].dtype != torch.int8:
            raise CheckpointError(f"{path}: expected int8 tensor {key!r} for its scale, found none")
        state[key] = state[key].to(torch.float32) * (2.0 ** int(exponent))
    stray = [k for k, v in state.items() if v.dtype == torch.int8]
    if stray:
        raise CheckpointError(f"{path}: expected a scale exponent for every int8 tensor, missing {stray[:5]}")
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Any supported weight file: safetensors (plain or int8-scaled) or a torch pickle (read without running it)."""
    path = Path(path)
    return load_int8_safetensors(path) if path.suffix == ".safetensors" else load_torch_state_dict(path)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> nn.Module:
    """Copy `state` into `module`; every key and shape must match, else CheckpointError (module untouched).

    BatchNorm `num_batches_tracked` counters may be absent (checkpoints older than PyTorch 0.4.1, like
    syncnet_v2.model); they do not affect eval-mode outputs and keep their initial value.
    """
    own = module.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith(OPTIONAL_KEY_SUFFIX)}, **state}
    check_state_dict(state, own, source=source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return module
