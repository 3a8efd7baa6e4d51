"""Finding the face: landmark sources (InsightFace, mediapipe, track files) and the tracker that keeps one person."""

from __future__ import annotations

import logging
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

SOURCE_NAMES = ("auto", "insightface", "mediapipe")

__all__ = [
    "FACEMESH_468_GROUPS", "INSIGHTFACE_106_GROUPS", "FaceObservation", "FaceSource", "FaceThresholds", "FaceTrack",
    "FaceTracker", "FrameFaces", "FrameResult", "NoFaceRange", "Rejected", "SOURCE_NAMES", "TrackerConfig",
    "make_face_source", "three_points",
]


def make_face_source(spec: str, **kw) -> FaceSource:
    """'insightface' | 'mediapipe' | a track-file path (.json) | 'auto'.

    'auto' takes InsightFace (the official detector; its buffalo_l files are fetched once with a checked hash when
    not cached) when that works and onnxruntime is installed, else mediapipe (Apache-2.0, fetched once from PyPI),
    logging why. Keyword arguments go to the source class.
    """
    if spec == "insightface":
        from engine.face.detection.insightface import InsightFaceSource

        return InsightFaceSource(**kw)
    if spec == "mediapipe":
        from engine.face.detection.mediapipe import MediapipeFaceSource

        return MediapipeFaceSource(**kw)
    if spec == "auto":
        # The official detector first (fetched once, hash-checked, when not cached and the network allows);
        # the Apache-2.0 mediapipe models when it cannot be had.
        try:
            return make_face_source("insightface", **kw)
        except (BackendUnavailableError, CheckpointError, OSError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.info("face source auto: mediapipe (InsightFace unavailable: %s)", why)
        return make_face_source("mediapipe", **kw)
    if str(spec).lower().endswith(".json") or Path(str(spec)).is_file():
        from engine.face.detection.trackfile import TrackFileSource

        return TrackFileSource(spec, **kw)
    raise InvalidInputError(f"face source: expected one of {SOURCE_NAMES} or a track-file path (.json), found {spec!r}")
