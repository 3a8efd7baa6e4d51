"""Finding the face: landmark sources (InsightFace, mediapipe, track files) and the tracker that keeps one person."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from engine.errors import BackendUnavailableError, CheckpointError, InvalidInputError
from engine.face.detection.base import (
    FACEMESH_468_GROUPS,
    INSIGHTFACE_106_GROUPS,
    FaceObservation,
    FaceSource,
    FaceThresholds,
    FrameFaces,
    Rejected,
    three_points,
)
from engine.face.detection.tracking import FaceTrack, FaceTracker, FrameResult, NoFaceRange, TrackerConfig

log = logging.getLogger(__name__)

SOURCE_NAMES = ("auto", "insightface", "mediapipe", "mediapipe-static")

__all__ = [
    "FACEMESH_468_GROUPS", "INSIGHTFACE_106_GROUPS", "FaceObservation", "FaceSource", "FaceThresholds", "FaceTrack",
    "FaceTracker", "FrameFaces", "FrameResult", "NoFaceRange", "Rejected", "SOURCE_NAMES", "TrackerConfig",
    "make_face_source", "three_points",
]


def make_face_source(spec: str, **kw) -> FaceSource:
    """'insightface' | 'mediapipe' | 'mediapipe-static' | a track-file path (.json) | 'auto'.

    'auto' takes InsightFace (the official detector; its buffalo_l files are fetched once with a checked hash when
    not cached) when that works and onnxruntime is installed, else mediapipe (Apache-2.0, fetched once from PyPI),
    logging why. 'mediapipe' tracks the face from frame to frame as mediapipe's video mode does;
    'mediapipe-static' detects on every frame (mediapipe's static_image_mode). Keyword arguments go to the
    source class. Every call returns a new source (cheap); sources hold no per-video state.
    """
    if spec == "insightface":
        from engine.face.detection.insightface import InsightFaceSource

        return InsightFaceSource(**kw)
    if spec in ("mediapipe", "mediapipe-static"):
        from engine.face.detection.mediapipe import MediapipeFaceSource

        return MediapipeFaceSource(**{"mode": "static" if spec == "mediapipe-static" else "video", **kw})
    if spec == "auto":
        return _auto(**kw)
    if str(spec).lower().endswith(".json") or Path(str(spec)).is_file():
        from engine.face.detection.trackfile import TrackFileSource

        return TrackFileSource(spec, **kw)
    raise InvalidInputError(f"face source: expected one of {SOURCE_NAMES} or a track-file path (.json), found {spec!r}")


FETCH_RETRY_S = 24 * 3600  # after a failed buffalo_l download, `auto` tries again only this much later
FETCH_FAILED_FILE = "buffalo_l/.fetch-failed.json"  # in the face-model cache: when and why the download failed
_logged_fallbacks: set[str] = set()  # fallback reasons already logged at INFO by this process


def _auto(**kw) -> FaceSource:
    """The official detector when it can be had, else mediapipe; one INFO line per process says why.

    A failed download of the InsightFace files is remembered in the cache for FETCH_RETRY_S, so runs on a
    machine without access do not retry (and log) it every time; `--face insightface` always tries."""
    why = _insightface_skip_reason()
    if why is None:
        try:
            return make_face_source("insightface", **kw)
        except (BackendUnavailableError, CheckpointError, OSError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, CheckpointError) and "could not fetch" in why:
                _remember_fetch_failure(why)
    level = logging.DEBUG if why in _logged_fallbacks else logging.INFO
    _logged_fallbacks.add(why)
    log.log(level, "face source auto: mediapipe (InsightFace unavailable: %s)", why)
    return make_face_source("mediapipe", **kw)


def _insightface_skip_reason() -> str | None:
    """Why `auto` should not even try InsightFace now (no onnxruntime; a recent failed download), else None."""
    import importlib.util

    from engine.face.detection import models

    if importlib.util.find_spec("onnxruntime") is None:
        return 'needs onnxruntime: pip install -e ".[cpu]"'
    try:
        if all(models.cached(m) is not None for m in (models.INSIGHTFACE_DETECTOR, models.INSIGHTFACE_LANDMARK)):
            return None
    except CheckpointError:  # a damaged cache file: let the InsightFace source say so
        return None
    record = models.cache_dir() / FETCH_FAILED_FILE
    try:
        failed = json.loads(record.read_text())
        age = time.time() - float(failed["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not 0 <= age < FETCH_RETRY_S:
        return None
    return (f"buffalo_l not cached; its download failed {age / 3600:.1f} h ago ({failed.get('reason', '?')}); "
            f"retried after {FETCH_RETRY_S // 3600} h, or now with --face insightface")


def _remember_fetch_failure(reason: str) -> None:
    import re

    from engine.face.detection import models

    cause = re.search(r"(\w+(?:Error|Exception): .*)$", reason)  # 'URLError: <urlopen error ...>' of the long message
    reason = cause.group(1) if cause else reason
    record = models.cache_dir() / FETCH_FAILED_FILE
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"time": time.time(), "reason": reason[:300]}))
    except OSError:  # a read-only cache: the next run simply tries again
        pass
