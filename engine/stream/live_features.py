"""Audio features while speech is still arriving (`live` mode) and their drift from the offline ones.

The official encoder is non-causal: one log-mel maximum over the whole clip and
attention over whole 30 s windows. Live mode encodes only the audio seen so far
in the current 30 s segment (no padding to 30 s), keeps every position at its
true offset within the segment, and re-encodes the segment as audio arrives.
Once the utterance is complete (`final=True`) the features are computed exactly
as offline, so later frames of a finished utterance use the exact features.
The drift is measured here (`live_feature_drift`); what it costs in lip-sync
quality can only be judged with the real weights.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.constants import HOP_LENGTH, MEL_WINDOW_FRAMES, SAMPLE_RATE, SAMPLES_PER_FRAME

CONV_STRIDE = 2
ROWS_PER_SEGMENT = MEL_WINDOW_FRAMES // CONV_STRIDE  # 1500 feature rows per 30 s
WINDOW_AHEAD_SAMPLES = 3 * SAMPLES_PER_FRAME  # a frame's window reaches 120 ms past its time


def num_features(num_samples: int) -> int:
    """N for S samples, as the official segmentation produces: 1500·⌊M/3000⌋ + ⌊(M mod 3000)/2⌋, M = ⌊S/160⌋."""
    m = num_samples // HOP_LENGTH
    return ROWS_PER_SEGMENT * (m // MEL_WINDOW_FRAMES) + (m % MEL_WINDOW_FRAMES) // CONV_STRIDE


def samples_needed(frame_index: int, lookahead_ms: float) -> int:
    """Audio (samples from the utterance start) that must have arrived before frame `frame_index` is made."""
    return frame_index * SAMPLES_PER_FRAME + WINDOW_AHEAD_SAMPLES + int(round(lookahead_ms * SAMPLE_RATE / 1000))


class LiveFeatures:
    """Incremental whisper features for one utterance."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self._done_segments: list[torch.Tensor] = []  # exact-as-live rows of finished 30 s segments

    @torch.inference_mode()
    def features(self, samples: np.ndarray, *, final: bool = False) -> torch.Tensor:
        """Features [N', 5, C] for the audio so far (`final`: the utterance is complete -> offline-exact)."""
        from engine.audio import audio_features, log_mel_spectrogram
        from engine.audio.features import _placement

        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        if final:
            return audio_features(audio, self.encoder)
        mel = log_mel_spectrogram(audio)  # [80, M]; maximum over the audio seen so far
        device, dtype = _placement(self.encoder)
        total = mel.shape[-1]
        full_segments = total // MEL_WINDOW_FRAMES
        while len(self._done_segments) < full_segments:  # a segment just completed: encode it whole, once
            k = len(self._done_segments)
            window = mel[:, k * MEL_WINDOW_FRAMES:(k + 1) * MEL_WINDOW_FRAMES]
            self._done_segments.append(self.encoder(window[None].to(device, dtype))[0])
        parts = list(self._done_segments)
        tail = mel[:, full_segments * MEL_WINDOW_FRAMES:]
        if tail.shape[-1] >= CONV_STRIDE:
            parts.append(self.encoder(tail[None].to(device, dtype), position_offset=0)[0])
        if not parts:
            raise ValueError("live features need at least 20 ms of audio")
        return torch.cat(parts)  # [N', 5, C]


def live_feature_drift(samples: np.ndarray, encoder, *, lookahead_ms: float, chunk_frames: int) -> dict:
    """Mean relative L2 between the per-frame windows live mode would use and the offline ones.

    Simulates speech arriving in real time: each chunk of frames is made as soon
    as its last frame's window plus the lookahead has arrived.
    """
    from engine.audio import audio_features, frame_windows, official_frame_count

    offline = audio_features(torch.from_numpy(samples), encoder)
    total_frames = official_frame_count(offline.shape[0])
    live = LiveFeatures(encoder)
    errors = []
    for start in range(0, total_frames, chunk_frames):
        stop = min(start + chunk_frames, total_frames)
        available = min(samples.size, samples_needed(stop - 1, lookahead_ms))
        final = available >= samples.size
        feats = live.features(samples[:available], final=final)
        got = frame_windows(feats, start, stop)  # clamps rows past what has arrived
        want = frame_windows(offline, start, stop)
        num = torch.linalg.vector_norm((got - want).flatten(1), dim=1)
        den = torch.linalg.vector_norm(want.flatten(1), dim=1).clamp_min(1e-12)
        errors.append(num / den)
    per_frame = torch.cat(errors)
    return {"lookahead_ms": lookahead_ms, "chunk_frames": chunk_frames, "frames": int(per_frame.numel()),
            "mean_relative_l2": float(per_frame.mean()), "max_relative_l2": float(per_frame.max())}
