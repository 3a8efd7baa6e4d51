"""Speech from a voice-agent framework (int16 PCM at any rate) -> the session's 16 kHz mono float32, checked first.

Both frameworks hand us TTS audio as 16-bit PCM at the TTS's own rate. 16 kHz passes through unchanged (so an
integration's frames equal a `StreamSession`'s for the same samples); any other rate goes through one PyAV
resampler per utterance, so the pieces of an utterance join without clicks.
"""

from __future__ import annotations

import numpy as np

from engine.constants import SAMPLE_RATE
from engine.errors import InvalidInputError

MIN_RATE, MAX_RATE = 8_000, 192_000


def check_pcm(data, sample_rate, num_channels) -> np.ndarray:
    """int16 samples [n] of one mono piece of speech, or InvalidInputError saying what was wrong."""
    if num_channels != 1:
        raise InvalidInputError(f"speech: expected mono audio (1 channel), found {num_channels} channels")
    if not isinstance(sample_rate, int) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise InvalidInputError(f"speech: expected a sample rate in {MIN_RATE}..{MAX_RATE} Hz, found {sample_rate!r}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) % 2:
            raise InvalidInputError(f"speech: expected 16-bit PCM (an even byte count), found {len(data)} bytes")
        pcm = np.frombuffer(bytes(data), np.int16)
    else:
        pcm = np.asarray(data)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise InvalidInputError(f"speech: expected int16 samples [n], found {pcm.dtype} {list(pcm.shape)}")
    if pcm.size == 0:
        raise InvalidInputError("speech: expected at least one sample, found empty audio")
    return pcm


class SpeechResampler:
    """int16 mono pieces at any rate -> float32 16 kHz, stateful across one utterance (`flush` at its end)."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._resampler = None

    def convert(self, data, sample_rate, num_channels=1) -> np.ndarray:
        """One piece of speech -> float32 [m] at 16 kHz in [-1, 1] (m may be 0 while the resampler fills)."""
        pcm = check_pcm(data, sample_rate, num_channels)
        if sample_rate == SAMPLE_RATE and self._resampler is None:
            return pcm.astype(np.float32) / 32768.0  # exactly what StreamSession.push_audio does with int16
        out = [] if self._rate in (None, sample_rate) else [self.flush()]  # the rate changed mid-utterance
        if self._resampler is None:
            import av

            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            self._rate = sample_rate
        out.append(self._run(self._frame(pcm, sample_rate)))
        return np.concatenate(out)

    def flush(self) -> np.ndarray:
        """The resampler's last samples of the utterance; it starts afresh after this."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        try:
            return self._run(None)
        finally:
            self.reset()

    def reset(self) -> None:
        self._resampler, self._rate = None, None

    @staticmethod
    def _frame(pcm: np.ndarray, sample_rate: int):
        import av

        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        return frame

    def _run(self, frame) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        return np.clip(out, -1.0, 1.0)  # the filter may overshoot a full-scale input slightly
