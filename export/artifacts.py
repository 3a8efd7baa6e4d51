"""Content hashes, artifact paths and JSON sidecars: one place decides what a file is and where it lives."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from export.locking import atomic_write_text

HASH_CHUNK = 8 << 20  # bytes read per hashing step
ONNX_DATA_SUFFIX = ".data"  # external tensor data: <name>.onnx.data
MANIFEST_SUFFIX = ".json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    """Fingerprint of a module's state (names, dtypes, shapes and bytes of every tensor)."""
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
    path = manifest_path(artifact)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
