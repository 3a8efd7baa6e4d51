"""Adapters from the face-finding layer (engine.face.detection) to the core's per-frame landmarks."""

from __future__ import annotations

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


def make_landmark_source(spec, resolution: int, detectors: dict | None = None) -> FaceLandmarkSource:
    """'auto' | 'insightface' | 'mediapipe' | a track-file path | an array [T,3,2] | a FaceLandmarkSource.

    Every run gets a fresh tracker; the detector behind it (model sessions) is
    reused from `detectors` when given, so repeated runs do not reload models.
    """
    if isinstance(spec, FaceLandmarkSource):
        return spec
    if isinstance(spec, np.ndarray):
        return LandmarkArraySource(spec)
    from engine.face.detection import FaceTracker, make_face_source

    key = str(spec)
    detector = detectors.get(key) if detectors is not None else None
    if detector is None:
        detector = make_face_source(key)
        if detectors is not None:
            detectors[key] = detector
    return TrackedFaceSource(FaceTracker(detector))
