"""Media reading for the evaluator: 25 fps RGB frames and 16 kHz int16 mono audio (via engine.media)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.constants import FPS


def iter_rgb_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Frames [H,W,3] uint8 RGB resampled to 25 fps by timestamp (the engine's output rate)."""
    from engine.media import iter_video_frames

    for frame in iter_video_frames(path, fps=FPS):
        yield frame.rgb


def frame_count(path: str | Path) -> int:
    """Frames `iter_rgb_frames` yields for a complete stream (from metadata: ceil(duration * 25))."""
    from engine.media import estimate_frame_count, probe

    return estimate_frame_count(probe(path, require_video=True).video, FPS)


def load_audio_int16(path: str | Path) -> np.ndarray:
    """First audio stream as int16 mono at 16 kHz (like `ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`)."""
    from engine.media import load_pcm16

    return load_pcm16(path)
