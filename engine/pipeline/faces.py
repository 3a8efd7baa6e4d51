"""Adapters from the face-finding layer (engine.face.detection) to the core's per-frame landmarks."""

from __future__ import annotations

import threading

import numpy as np

from engine.errors import InvalidInputError
from engine.pipeline.core import FaceLandmarkSource


class LandmarkArraySource(FaceLandmarkSource):
    """Given 3-point landmarks per source frame ([T,3,2]; NaN rows mean no face)."""

    def __init__(self, landmarks: np.ndarray) -> None:
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.ndim != 3 or landmarks.shape[1:] != (3, 2):
            raise InvalidInputError(f"landmarks: expected [T,3,2], found {landmarks.shape}")
        self._landmarks = landmarks

    def landmarks(self, source_index: int, rgb: np.ndarray) -> np.ndarray | None:
        if source_index >= len(self._landmarks):
            raise InvalidInputError(
                f"landmarks: expected one entry per source frame, found {len(self._landmarks)} for frame {source_index}"
            )
        points = self._landmarks[source_index]
        return None if np.isnan(points).any() else points


class TrackedFaceSource(FaceLandmarkSource):
    """A detector (InsightFace, mediapipe, track file) behind the tracker that keeps one person."""

    def __init__(self, tracker) -> None:
        self.tracker = tracker

    def landmarks(self, source_index: int, rgb: np.ndarray) -> np.ndarray | None:
        observation = self.tracker.update(source_index, rgb)
        return None if observation is None else np.asarray(observation.landmarks3, dtype=np.float32)


def make_landmark_source(spec, resolution: int, detector=None) -> FaceLandmarkSource:
    """'auto' | 'insightface' | 'mediapipe' | a track-file path | an array [T,3,2] | a FaceLandmarkSource.

    Every call gets a fresh tracker. `detector` (a face source leased from a `DetectorPool`) is used
    instead of loading one; it must not be used by another thread while this source is in use.
    """
    if isinstance(spec, FaceLandmarkSource):
        return spec
    if isinstance(spec, np.ndarray):
        return LandmarkArraySource(spec)
    from engine.face.detection import FaceTracker, make_face_source

    return TrackedFaceSource(FaceTracker(detector if detector is not None else make_face_source(str(spec))))


def needs_detector(spec) -> bool:
    """Whether `spec` names a detector (as opposed to given landmarks or a ready landmark source)."""
    return not isinstance(spec, (FaceLandmarkSource, np.ndarray))


class DetectorPool:
    """Face detectors by spec, each lent to one job at a time.

    The detector and landmark interpreters (mediapipe, ONNX Runtime sessions) keep per-call state and
    are not safe to share between threads, so concurrent jobs each lease their own; a returned detector
    is reused by the next job (models load once per concurrent job, not once per call).
    """

    def __init__(self, *, offline: bool = False) -> None:
        self._idle: dict[str, list] = {}
        self._lock = threading.Lock()
        self.offline = offline  # a new detector fetches no model files (engine.weights.fetch.offline_mode)

    def lease(self, spec) -> "DetectorLease":
        key = str(spec)
        with self._lock:
            idle = self._idle.get(key)
            detector = idle.pop() if idle else None
        if detector is None:
            from engine.face.detection import make_face_source
            from engine.weights.fetch import offline_mode

            with offline_mode(self.offline):
                detector = make_face_source(key)
        return DetectorLease(self, key, detector)

    def _give_back(self, key: str, detector) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(detector)

    def idle_count(self, spec) -> int:
        with self._lock:
            return len(self._idle.get(str(spec), ()))


class DetectorLease:
    """One job's detector; `release()` (idempotent) returns it to the pool."""

    def __init__(self, pool: DetectorPool, key: str, detector) -> None:
        self._pool, self._key, self.detector = pool, key, detector
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._give_back(self._key, self.detector)
