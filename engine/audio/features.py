"""Whole-clip audio features with the official 30 s segmentation (`transcribe` + `audio2feat`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.audio.mel import as_samples, log_mel_spectrogram
from engine.audio.whisper import CONV_STRIDE, WhisperAudioEncoder
from engine.constants import HOP_LENGTH, MEL_WINDOW_FRAMES

MIN_FEATURE_SAMPLES = CONV_STRIDE * HOP_LENGTH  # 320 samples (20 ms) give the first feature row
WINDOW_BATCH = 1  # 30 s windows per encoder call: one keeps peak memory flat in the clip length


def mel_windows(mel: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """mel [80, M] -> (windows [W, 80, 3000] zero-padded in log-mel space, rows kept per window)."""
    total = mel.shape[-1]
    starts = range(0, total, MEL_WINDOW_FRAMES)
    windows = [F.pad(mel[:, s:s + MEL_WINDOW_FRAMES], (0, max(0, s + MEL_WINDOW_FRAMES - total)))
               for s in starts]
    keep = [(min(s + MEL_WINDOW_FRAMES, total) - s) // CONV_STRIDE for s in starts]
    return torch.stack(windows), keep


def _placement(encoder) -> tuple[torch.device, torch.dtype]:
    """Where a bare nn.Module wants its mel (its weights' device and dtype).

    Runners (engine.backends.AudioRunner) and the engine core's `audio_encoder` proxy move their
    input themselves and return features on the mel's device, so for them (and any other callable)
    the mel stays on the CPU in float32.
    """
    weight = next(encoder.parameters(), None) if isinstance(encoder, torch.nn.Module) else None
    if weight is not None:
        return weight.device, weight.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def audio_features(samples: torch.Tensor | np.ndarray, encoder: WhisperAudioEncoder, *,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """16 kHz mono samples [S] -> features [N, 5, C], N = 1500*(M//3000) + (M%3000)//2.

    encoder: a runner or the engine core's proxy (features come back on the CPU), a WhisperAudioEncoder
    (features on its device) or any callable mel [B, 80, 3000] -> [B, 1500, 5, C].
    dtype: encoder compute dtype (default: the encoder's weight dtype). float16 with fp32 weights on
    CUDA reproduces the official GPU encode; the result has this dtype.
    """
    audio = as_samples(samples, min_samples=MIN_FEATURE_SAMPLES)
    device, weight_dtype = _placement(encoder)
    dtype = weight_dtype if dtype is None else dtype
    windows, keep = mel_windows(log_mel_spectrogram(audio))  # [W, 80, 3000]
    parts = []
    for first in range(0, windows.shape[0], WINDOW_BATCH):
        batch = windows[first:first + WINDOW_BATCH].to(device, dtype)
        embeddings = encoder(batch)  # [w, 1500, 5, C]
        parts.extend(emb[:rows] for emb, rows in zip(embeddings, keep[first:first + WINDOW_BATCH]))
    return torch.cat(parts)  # [N, 5, C]
