"""Content hashes, artifact paths and JSON sidecars: one place decides what a file is and where it lives."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from engine.weights.fetch import sha256_file  # the one file-hash implementation
from export.locking import atomic_write_text, file_lock

ONNX_DATA_SUFFIX = ".data"  # external tensor data: <name>.onnx.data
MANIFEST_SUFFIX = ".json"
DIGEST_CACHE_FILE = "file-digests.json"  # in the engine cache: {abs path: [size, mtime_ns, sha256]}

_digest_memo: dict[str, tuple[int, int, str]] = {}  # the same cache, in this process


def file_stats(path: Path) -> list[int]:
    """[size, mtime_ns]: the guard under which a recorded digest of `path` is trusted without re-reading it."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def digest_cache_path() -> Path:
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / DIGEST_CACHE_FILE


def cached_sha256_file(path: Path, *, cache: Path | None = None) -> str:
    """sha256 of a file's bytes, read once per (path, size, mtime): checkpoints are GBs, start-up must not re-read them.

    The digest is kept in this process and in a small JSON file in the engine cache (`cache`), so the next process
    trusts it while the file's size and mtime are unchanged. An edit that keeps both is not noticed; checks that
    must see one (`engine build --no-build`) call sha256_file directly.
    """
    real = str(Path(path).resolve())  # the HF cache links names to blobs: key by the blob
    stats = file_stats(Path(real))
    memo = _digest_memo.get(real)
    if memo and list(memo[:2]) == stats:
        return memo[2]
    cache = Path(cache) if cache is not None else digest_cache_path()
    entry = read_json_dict(cache).get(real)
    if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stats:
        digest = str(entry[2])
    else:
        digest = sha256_file(Path(real))
        _record_digest(cache, real, [*stats, digest])
    _digest_memo[real] = (stats[0], stats[1], digest)
    return digest


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file's contents, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_digest(cache: Path, key: str, entry: list) -> None:
    """Add one entry under the cache's lock (a read-only or missing cache folder only costs the next re-hash)."""
    try:
        with file_lock(cache):
            data = read_json_dict(cache)
            data[key] = entry
            atomic_write_text(cache, json.dumps(data, indent=0, sort_keys=True) + "\n")
    except OSError:
        pass


def files_key(paths: Iterable[Path], *, extra: Mapping[str, Any] | None = None) -> str:
    """'files:<sha256>' over the cached digests of `paths` (by name) and `extra` (e.g. a config dict)."""
    parts = {Path(p).name: cached_sha256_file(Path(p)) for p in sorted(paths, key=lambda p: Path(p).name)}
    return "files:" + hashlib.sha256(json.dumps({"files": parts, "extra": extra or {}}, sort_keys=True,
                                                default=str).encode()).hexdigest()


def onnx_data_path(onnx_path: Path) -> Path:
    """Where an ONNX file's external tensor data lives when it has any."""
    return onnx_path.with_name(onnx_path.name + ONNX_DATA_SUFFIX)


def onnx_sha256(onnx_path: Path) -> str:
    """sha256 of the graph file and, when present, its external data file (so new weights change the hash)."""
    onnx_path = Path(onnx_path)
    parts = [sha256_file(onnx_path)]
    data = onnx_data_path(onnx_path)
    if data.exists():
        parts.append(sha256_file(data))
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """Fingerprint of a module's state (names, dtypes, shapes and bytes of every tensor).

    Copies every tensor to the host: for modules built in memory (tests, random benchmark models). Loaded
    checkpoints are keyed by their files instead (`files_key`), which costs nothing after the first run.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stable_key(fields: Mapping[str, Any], length: int = 16) -> str:
    """Short content key: sha256 of the canonical JSON of `fields`."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def slug(text: str) -> str:
    """File-name-safe form of a version or device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def manifest_path(artifact: Path) -> Path:
    """The JSON sidecar describing `artifact` (engine, ONNX file, timing cache)."""
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def write_manifest(artifact: Path, fields: Mapping[str, Any]) -> Path:
    return atomic_write_text(manifest_path(artifact), json.dumps(dict(fields), indent=2, sort_keys=True, default=str) + "\n")


def read_manifest(artifact: Path) -> dict[str, Any] | None:
    """The sidecar's fields, or None when it is missing or not valid JSON."""
    return read_json_dict(manifest_path(artifact)) or None


def differing_fields(expected: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (expected, found)} for every expected field whose value differs (JSON-normalised)."""

    def norm(value: Any) -> Any:
        return json.loads(json.dumps(value, sort_keys=True, default=str))

    return {k: (v, found.get(k)) for k, v in expected.items() if norm(v) != norm(found.get(k))}


def describe_differences(diffs: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: expected {e!r}, found {f!r}" for k, (e, f) in sorted(diffs.items()))


def check_against_manifest(path: Path, expected: Mapping[str, Any], *, missing: str,
                           no_manifest: str) -> tuple[str | None, dict[str, Any]]:
    """(reason the file at `path` does not match `expected`, or None; its manifest) without reading the file."""
    if not Path(path).exists():
        return missing, {}
    manifest = read_manifest(Path(path))
    if manifest is None:
        return no_manifest, {}
    diffs = differing_fields(expected, manifest)
    return (describe_differences(diffs) if diffs else None), manifest
