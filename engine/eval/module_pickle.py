"""Tensors out of a pickled whole `nn.Module` without running any of the pickle's code.

Old evaluator checkpoints may be `torch.save(model)` pickles, which `torch.load(weights_only=True)` refuses
because they name model classes. Here every global outside torch's weights-only allowlist resolves to an
inert stub class: calling it or restoring its state only stores the arguments, so nothing named by the
file is imported or executed. The module tree is then read from the stubs' `_parameters` / `_buffers` /
`_modules` dicts.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch

from engine.errors import CheckpointError


TORCHSCRIPT_MARKERS = ("constants.pkl", ".py")  # records only TorchScript archives contain


class Stub:
    """Inert stand-in for a class the checkpoint names; records what unpickling hands it."""

    stub_name = "?"

    def __init__(self, *args, **kwargs):
        self.stub_args = args

    def __setstate__(self, state):
        self.stub_state = state


def _reconstructor(cls, base, state):  # copyreg._reconstructor, minus the call into `base`
    return cls.__new__(cls) if isinstance(cls, type) and issubclass(cls, Stub) else Stub()


class _StubUnpickler(pickle.Unpickler):
    _stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        from torch._weights_only_unpickler import _get_allowed_globals

        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol <= 2 pickles use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full == "copyreg._reconstructor":
            return _reconstructor
        allowed = _get_allowed_globals().get(full)
        if allowed is not None:
            return allowed
        if full not in self._stubs:
            self._stubs[full] = type(name, (Stub,), {"stub_name": full})
        return self._stubs[full]


def _load(file, **kwargs):
    return _StubUnpickler(file, **kwargs).load()


STUB_PICKLE = SimpleNamespace(__name__="engine_stub_pickle", Unpickler=_StubUnpickler, load=_load)


def _state_of(obj) -> dict | None:
    state = getattr(obj, "stub_state", None)
    if isinstance(state, tuple) and state and isinstance(state[0], Mapping):  # (dict, slots)
        state = state[0]
    return dict(state) if isinstance(state, Mapping) else None


def _collect(obj, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    state = _state_of(obj)
    if state is None or depth > 64:
        return
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, depth + 1)


def load_module_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """state_dict-style tensors of a `torch.save(module)` file (zip or legacy format); code never runs."""
    if zipfile.is_zipfile(path):  # torch.load(weights_only=False) would hand a TorchScript zip to torch.jit.load
        with zipfile.ZipFile(path) as archive:
            scripted = [n for n in archive.namelist() if n.endswith(TORCHSCRIPT_MARKERS)]
        if scripted:
            raise CheckpointError(f"{path}: expected tensors, found a TorchScript archive ({scripted[0]}); refused")
    try:
        with warnings.catch_warnings():  # legacy files ask to compare stub "sources"; there are none
            warnings.simplefilter("ignore")
            root = torch.load(path, map_location="cpu", weights_only=False, pickle_module=STUB_PICKLE)
    except Exception as exc:  # any malformed stream: the stubs never execute, so only parsing can fail
        raise CheckpointError(f"{path}: expected a pickled module, found unreadable data: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state)
    if not state:
        raise CheckpointError(f"{path}: expected a pickled nn.Module with parameters, found {type(root).__name__}")
    return state
