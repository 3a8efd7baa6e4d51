"""Validation of pushed speech at the API boundary: 16 kHz mono PCM, int16 or float32, any chunk size."""

from __future__ import annotations

import numpy as np

from engine.constants import HOP_LENGTH
from engine.errors import InvalidInputError, QueueFullError
from engine.media.audio import check_float_samples

MIN_UTTERANCE_SAMPLES = 2 * HOP_LENGTH  # 20 ms: one whisper feature row


def to_float_pcm(samples) -> np.ndarray:
    """int16 (scaled by 1/32768) or float32 mono samples -> float32 [n]; anything else is invalid input."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise InvalidInputError(f"audio chunk: expected mono samples [n], found shape {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype != np.float32:
        raise InvalidInputError(f"audio chunk: expected int16 or float32 samples at 16 kHz, found {array.dtype}")
    return check_float_samples(array, "audio chunk")  # the SDK's check too


class PcmBuffer:
    """One utterance's samples, growing by appends, refusing to grow past `max_samples`."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._parts: list[np.ndarray] = []
        self._size = 0
        self._joined: np.ndarray | None = None

    def __len__(self) -> int:
        return self._size

    def append(self, samples: np.ndarray) -> None:
        if self._size + samples.size > self.max_samples:
            raise QueueFullError(
                f"speech buffer: expected at most {self.max_samples} queued samples, "
                f"found {self._size} queued + {samples.size} pushed")
        if samples.size:
            self._parts.append(samples)
            self._size += samples.size
            self._joined = None

    def array(self) -> np.ndarray:
        if self._joined is None:
            self._joined = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
            self._parts = [self._joined] if self._size else []
        return self._joined
