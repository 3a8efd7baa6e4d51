"""Safe, strict checkpoint files: no pickle code ever runs, and every key and shape is checked."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.errors import CheckpointError
from engine.media.paths import default_mode
from engine.weights.fetch import sha256_file, verify_sha256  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs"
SAFETENSORS_SUFFIX = ".safetensors"
MAX_LISTED_KEYS = 5  # keys named per problem kind in an error message


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint file, found {'a directory' if path.exists() else 'nothing'}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: expected a checkpoint, found an empty file (0 bytes)")
    with path.open("rb") as f:
        head = f.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise CheckpointError(
            f"{path}: expected checkpoint data, found a git-lfs pointer file ({size} bytes); "
            "fetch the real file (git lfs pull or the HF hub)"
        )


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a .safetensors file (memory-mapped); CheckpointError when truncated or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ...: the header or data is broken
        raise CheckpointError(
            f"{path}: expected a complete safetensors file, found a truncated or corrupt one ({exc})"
        ) from exc


def read_torch_file(path: str | os.PathLike) -> Any:
    """Load a torch .pt/.bin with `weights_only=True` (memory-mapped when possible).

    A pickle that would run code (any global outside torch's allow-list) is refused with CheckpointError
    before anything of it executes.
    """
    path = Path(path)
    _check_file(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"the global {match.group(1)}" if match else "code"
        raise CheckpointError(
            f"{path}: expected tensors and plain containers only, found a pickle that refers to {what}; "
            "refused without running it"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: expected a complete torch checkpoint, found a truncated or corrupt one ({detail})") from exc


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a .safetensors file or a torch pickle (weights only), by suffix."""
    path = Path(path)
    return read_safetensors(path) if path.suffix == SAFETENSORS_SUFFIX else read_torch_file(path)


def read_state_dict(path: str | os.PathLike, *, container_key: str | None = "state_dict") -> dict[str, Tensor]:
    """The tensors of a checkpoint: a safetensors file, a flat torch dict, or a torch dict holding them under
    `container_key` (the official `{"state_dict": ..., "global_step": N}`; other entries are ignored)."""
    path = Path(path)
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if container_key is not None and container_key in obj:
        ignored = sorted(k for k in obj if k != container_key)
        if ignored:
            log.debug("%s: ignoring top-level entries %s", path, ignored)
        obj = obj[container_key]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path}: expected {container_key!r} to be a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: expected only tensors, found non-tensor entries {bad[:MAX_LISTED_KEYS]}"
            + (f" (expected the weights under {container_key!r})" if container_key else "")
        )
    return dict(obj)


def _shape(t: Tensor | torch.Size) -> list[int]:
    return list(t.shape if isinstance(t, Tensor) else t)


def check_state_dict(found: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, source: str | os.PathLike) -> None:
    """Raise CheckpointError unless `found` has exactly the keys of `expected` with the same shapes.

    The message names the file, each offending key (up to 5 per kind), and expected vs found.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [k for k in expected if k in found and _shape(found[k]) != _shape(expected[k])]
    wrong_kind = [
        k for k in expected
        if k in found and k not in misshaped and found[k].is_floating_point() != expected[k].is_floating_point()
    ]
    if not (missing or unexpected or misshaped or wrong_kind):
        check_finite(found, source=source)
        return
    parts = []
    for k in missing[:MAX_LISTED_KEYS]:
        parts.append(f"missing key {k!r}: expected shape {_shape(expected[k])}, found nothing")
    for k in unexpected[:MAX_LISTED_KEYS]:
        parts.append(f"unexpected key {k!r}: expected no such key, found shape {_shape(found[k])}")
    for k in misshaped[:MAX_LISTED_KEYS]:
        parts.append(f"key {k!r}: expected shape {_shape(expected[k])}, found {_shape(found[k])}")
    for k in wrong_kind[:MAX_LISTED_KEYS]:
        parts.append(f"key {k!r}: expected dtype like {expected[k].dtype}, found {found[k].dtype}")
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped, {len(wrong_kind)} wrong dtype"
    raise CheckpointError(f"{source}: checkpoint does not match the model ({counts}): " + "; ".join(parts))


def check_finite(state: Mapping[str, Tensor], *, source: str | os.PathLike) -> None:
    """CheckpointError naming every tensor (up to 5) that holds NaN or Inf: such weights give garbage, not an error.

    One sum per floating tensor, no temporary of the tensor's size: NaN and Inf always survive a sum, so
    a finite sum proves the tensor finite; a non-finite sum (or an overflow of large finite values) is
    settled by the exact element check. About 0.5 ns per parameter on one core (benchmarks/checkpoint_finite.py).
    """
    bad = []
    for key, tensor in state.items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and tensor.numel() and not tensor.is_meta:
            if not torch.isfinite(tensor.sum()) and not bool(torch.isfinite(tensor).all()):
                bad.append(key)
    if not bad:
        return
    parts = []
    for key in bad[:MAX_LISTED_KEYS]:
        t = state[key]
        parts.append(f"{key!r} ({int(torch.isnan(t).sum())} NaN, {int(torch.isinf(t).sum())} Inf of {t.numel()})")
    raise CheckpointError(f"{source}: expected finite weights, found non-finite values in {len(bad)} tensor(s): "
                          + "; ".join(parts))


def write_official_unet_checkpoint(state_dict: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Write `{"state_dict": ..., "global_step": 0}` with torch.save, the official latentsync_unet.pt layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"state_dict": dict(state_dict), "global_step": 0}, tmp))


def write_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (made contiguous, storage not shared) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().clone() if not v.is_contiguous() else v.detach() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(clean, str(tmp), metadata=metadata))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n"))


def atomic_write(path: Path, writer) -> None:
    """Call writer(tmp_path) on a temporary file beside `path`, then rename it into place.

    The temporary name is shortened to fit NAME_MAX (any legal `path` works). A full disk (or quota, file
    size limit, I/O error) raises OutputWriteError naming `path` and the free space; nothing is left behind.
    """
    from engine.media.paths import is_write_failure, output_write_error

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _temporary_file(path)
        writer(tmp)
        os.chmod(tmp, default_mode())  # mkstemp makes it private (0600); the result is an ordinary file
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_write_failure(exc):
            raise output_write_error(path, exc) from exc
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_file(path: Path) -> str:
    """A new empty private file beside `path` (`.<name>.XXXXXXXX.tmp`, the name shortened to fit NAME_MAX)."""
    from engine.media.paths import temporary_name

    prefix = temporary_name(path, ".XXXXXXXX.tmp").name[: -len("XXXXXXXX.tmp")]
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp
