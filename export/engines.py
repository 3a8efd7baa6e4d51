"""TensorRT engine artifacts: content-keyed paths, manifests, stale detection and locked builds (R15-R17)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

from engine.errors import IncompatibleEngineError
from export.artifacts import (
    check_against_manifest,
    describe_differences,
    differing_fields,
    file_stats,
    read_manifest,
    sha256_file,
    stable_key,
    write_manifest,
)
from export.locking import atomic_write, file_lock
from export.onnx_export import cached_onnx_sha256
from export.specs import BuildShape, Geometry, get_spec
from export.timing_cache import load_timing_cache, save_timing_cache, timing_cache_path
from export.trt_builder import BuildSettings, Profile, build_serialized_engine
from export.trt_env import TrtEnvironment

log = logging.getLogger(__name__)

ENGINE_FORMAT = 2  # bump when the manifest's meaning changes (2: strongly typed builds, fp32 norms)
ENGINE_SUFFIX = ".engine"
NO_ENGINE = "no engine built yet"
BuildFn = Callable[[Path, Profile, BuildSettings, "bytes | None"], "tuple[bytes, bytes | None]"]


def expected_fields(
    network: str, onnx_path: Path, geometry: Geometry, shape: BuildShape, settings: BuildSettings, env: TrtEnvironment
) -> dict[str, Any]:
    """Everything an engine must have been built from to be reused (its key is a hash of these)."""
    profile = get_spec(network).profile(geometry, shape)
    return {
        "format": ENGINE_FORMAT,
        "network": network,
        "precision": settings.precision,
        "onnx_sha256": cached_onnx_sha256(Path(onnx_path)),
        "profiles": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
        "build_flags": settings.flags(),
        **env.fields(),
    }


def engine_path(engine_dir: Path, fields: dict[str, Any]) -> Path:
    """`<network>.<precision>.<key>.engine`: the file name changes whenever any expected field does."""
    return Path(engine_dir) / f"{fields['network']}.{fields['precision']}.{stable_key(fields)}{ENGINE_SUFFIX}"


def stale_reason(path: Path, expected: dict[str, Any], *, verify_sha256: bool = False) -> str | None:
    """Why the engine at `path` must not be deserialized, or None when its manifest and bytes check out.

    The plan's sha256 is re-read only when its size or mtime differ from the manifest's record (a multi-GB
    plan is not re-hashed on every load), or always with `verify_sha256` (`engine build --no-build`).
    """
    reason, manifest = check_against_manifest(path, expected, missing=NO_ENGINE, no_manifest="engine has no manifest")
    if reason is not None:
        return reason if not manifest else f"built for other settings ({reason})"
    size = path.stat().st_size
    if manifest.get("engine_size") != size:
        return f"truncated or half-written: expected {manifest.get('engine_size')} bytes, found {size}"
    untouched = manifest.get("engine_stats") == file_stats(path)
    if (verify_sha256 or not untouched) and manifest.get("engine_sha256") != sha256_file(path):
        return "engine bytes differ from the sha256 in its manifest"
    return None


def _closest_other(path: Path, expected: dict[str, Any]) -> str | None:
    """Describe the nearest other engine for this network in the same folder (for a useful error)."""
    best: tuple[int, str] | None = None
    for other in sorted(path.parent.glob(f"{expected['network']}.*{ENGINE_SUFFIX}")):
        if other == path:
            continue
        manifest = read_manifest(other)
        if manifest is None:
            note = (10**6, f"{other.name} has no manifest")
        else:
            diffs = differing_fields(expected, manifest)
            note = (len(diffs), f"{other.name} differs: {describe_differences(diffs)}")
        best = min(best, note) if best else note
    return best[1] if best else None


def ensure_engine(
    network: str,
    onnx_path: Path,
    engine_dir: Path,
    *,
    geometry: Geometry,
    shape: BuildShape,
    settings: BuildSettings,
    env: TrtEnvironment,
    no_build: bool = False,
    verify_sha256: bool = False,
    timing_cache: Path | None = None,
    build_fn: BuildFn = build_serialized_engine,
) -> Path:
    """A checked engine for `network`: reused when its manifest matches, else built (or refused with `no_build`).

    The check happens before any deserialization. Builds run under a file lock and write to a temp file that is
    renamed into place; a process that waited for the lock re-checks and reuses the winner's engine.
    """
    graph = (read_manifest(Path(onnx_path)) or {}).get("dtype")
    if settings.typing == "strong" and graph is not None and graph != settings.precision:
        raise IncompatibleEngineError(
            f"{network}: a strongly typed {settings.precision} engine takes its precision from the graph; expected an "
            f"{settings.precision} ONNX export, found {graph} ({Path(onnx_path).name}): export at that dtype")
    expected = expected_fields(network, onnx_path, geometry, shape, settings, env)
    path = engine_path(engine_dir, expected)
    with file_lock(path):
        reason = stale_reason(path, expected, verify_sha256=verify_sha256)
        if reason is None:
            log.debug("engine %s is current", path.name)
            return path
        if reason == NO_ENGINE:
            reason = _closest_other(path, expected) or reason
        if no_build:
            raise IncompatibleEngineError(
                f"{network} engine {path.name}: expected a current engine, found: {reason} (--no-build forbids rebuilding)"
            )
        log.info("building %s engine %s (%s)", network, path.name, reason)
        _build_locked(network, onnx_path, path, expected, geometry, shape, settings, env, timing_cache, build_fn)
    return path


def _build_locked(network, onnx_path, path, expected, geometry, shape, settings, env, timing_cache, build_fn) -> None:
    keyed_cache = timing_cache_path(path.parent, env)
    cache_in = load_timing_cache(Path(timing_cache) if timing_cache else keyed_cache, env)
    start = time.monotonic()
    plan, cache_out = build_fn(Path(onnx_path), get_spec(network).profile(geometry, shape), settings, cache_in)
    seconds = time.monotonic() - start
    atomic_write(path, lambda tmp: tmp.write_bytes(plan))
    write_manifest(path, {
        **expected,
        "engine_size": len(plan),
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "engine_stats": file_stats(path),
        "onnx_file": Path(onnx_path).name,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    if cache_out:
        save_timing_cache(keyed_cache, env, cache_out)
    log.info("built %s in %.0f s (%d MiB)", path.name, seconds, len(plan) >> 20)
