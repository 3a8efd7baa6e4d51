"""The TensorRT builder timing cache as a named artifact keyed by TensorRT version and GPU (R17)."""

from __future__ import annotations

import logging
from pathlib import Path

from export.artifacts import differing_fields, describe_differences, read_manifest, slug, write_manifest
from export.locking import atomic_write_bytes, file_lock
from export.trt_env import TrtEnvironment

log = logging.getLogger(__name__)


def timing_cache_path(cache_dir: Path, env: TrtEnvironment) -> Path:
    """`timing-trt<version>-sm<cc>-<gpu>.cache` in `cache_dir`."""
    cc = env.compute_capability.replace(".", "")
    return Path(cache_dir) / f"timing-trt{slug(env.trt_version)}-sm{cc}-{slug(env.gpu_name)}.cache"


def load_timing_cache(path: Path, env: TrtEnvironment) -> bytes | None:
    """The cache bytes when `path` was written for `env`; None (with a warning) for another version or GPU."""
    path = Path(path)
    if not path.exists():
        return None
    manifest = read_manifest(path)
    if manifest is None:
        log.warning("ignoring timing cache %s: no manifest says which TensorRT/GPU wrote it", path)
        return None
    diffs = differing_fields(env.fields(), manifest)
    if diffs:
        log.warning("ignoring timing cache %s from another TensorRT/GPU (%s)", path, describe_differences(diffs))
        return None
    data = path.read_bytes()
    if manifest.get("size") != len(data):
        log.warning("ignoring timing cache %s: expected %s bytes, found %d", path, manifest.get("size"), len(data))
        return None
    return data


def save_timing_cache(path: Path, env: TrtEnvironment, data: bytes) -> Path:
    """Write the cache and its manifest atomically, under the cache's lock."""
    path = Path(path)
    with file_lock(path):
        atomic_write_bytes(path, data)
        write_manifest(path, {**env.fields(), "size": len(data)})
    return path
