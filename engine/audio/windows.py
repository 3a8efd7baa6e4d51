"""Per-video-frame audio windows (official `feature2chunks` / `get_sliced_feature`, 25 fps)."""

from __future__ import annotations

import torch

from engine.constants import AUDIO_FEATURES_PER_SECOND, AUDIO_TOKENS_PER_FRAME, FPS
from engine.errors import InvalidInputError, expect

FEATURES_PER_FRAME = AUDIO_FEATURES_PER_SECOND // FPS  # 2 feature rows per video frame
WINDOW_LEFT = 2 * FEATURES_PER_FRAME  # rows before the centre (audio_feat_length[0] = 2 frames)
WINDOW_RIGHT = 3 * FEATURES_PER_FRAME  # rows up to, excluding, centre + this (audio_feat_length[1] + 1 frames)
WINDOW_ROWS = WINDOW_LEFT + WINDOW_RIGHT  # 10 rows -> 10 x 5 layers = 50 tokens


def official_frame_count(num_features: int) -> int:
    """Number of windows the official loop yields for N feature rows: N//2 + 2 (2 more than the audio spans)."""
    expect(num_features >= 1, InvalidInputError, "audio feature rows", ">= 1", num_features)
    return num_features // FEATURES_PER_FRAME + 2


def window_indices(num_features: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Feature row indices [L, 10] int64 of frames start..stop-1: centre 2i, rows 2i-4 .. 2i+5 clamped to [0, N-1]."""
    stop = official_frame_count(num_features) if stop is None else stop
    expect(0 <= start <= stop, InvalidInputError, "frame range", "0 <= start <= stop", f"start={start}, stop={stop}")
    centres = torch.arange(start, stop, dtype=torch.int64)[:, None] * FEATURES_PER_FRAME  # [L, 1]
    offsets = torch.arange(-WINDOW_LEFT, WINDOW_RIGHT, dtype=torch.int64)[None, :]  # [1, 10]
    return (centres + offsets).clamp_(0, num_features - 1)  # [L, 10]


def frame_windows(features: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """features [N, 5, C] -> per-frame windows [L, 50, C] for frames start..stop-1 (default: all official ones).

    Tokens are time-major then layer (row-major over (10 rows, 5 layers)).
    """
    expect(features.ndim == 3, InvalidInputError, "audio features shape", "[N, layers, C]", tuple(features.shape))
    n, layers, channels = features.shape
    expect(layers * WINDOW_ROWS == AUDIO_TOKENS_PER_FRAME, InvalidInputError, "audio feature layers",
           AUDIO_TOKENS_PER_FRAME // WINDOW_ROWS, layers)
    index = window_indices(n, start, stop).to(features.device)  # [L, 10]
    return features[index].reshape(index.shape[0], AUDIO_TOKENS_PER_FRAME, channels)  # [L, 50, C]
