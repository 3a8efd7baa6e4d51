"""Is `--reference` a run of the same input as the evaluated video? A cheap check before PSNR / SSIM are trusted.

Lip-sync changes only the lower face: two runs of one clip (or a run and its input) share frame size, frame
count (within the two frames the official length rule adds) and, downscaled to 32x32 grey, almost every pixel.
A different clip fails at least one: the check compares probe metadata, then a few evenly spaced frames' mean
absolute difference (0-255 levels) against MAX_MEAN_DIFF.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

MAX_FRAME_COUNT_GAP = 2  # official length: N//2 + 2 frames, two more than an `audio`-length run
MAX_MEAN_DIFF = 12.0  # grey levels at 32x32: a chosen bound (tests/test_install_fixes.py checks both sides)
SAMPLED_FRAMES = 5
THUMB = 32


def _thumbs(path: str | os.PathLike, indices: list[int]) -> list[np.ndarray]:
    from engine.media import iter_video_frames

    wanted, out = set(indices), []
    frames = iter_video_frames(path, max_frames=max(indices) + 1)
    try:
        for i, frame in enumerate(frames):
            if i in wanted:
                grey = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
                out.append(cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32))
    finally:
        frames.close()
    return out


def reference_mismatch(video: str | os.PathLike, reference: str | os.PathLike) -> str | None:
    """Why `reference` does not look like a run of the same input as `video`, or None when it does."""
    from engine.media import count_source_frames, probe

    a, b = probe(video, require_video=True).video, probe(reference, require_video=True).video
    if (a.width, a.height) != (b.width, b.height):
        return f"frame size {b.width}x{b.height}, the evaluated video's is {a.width}x{a.height}"
    na, nb = count_source_frames(video), count_source_frames(reference)
    if abs(na - nb) > MAX_FRAME_COUNT_GAP:
        return f"{nb} frames, the evaluated video has {na}"
    n = min(na, nb)
    indices = sorted({round(i * (n - 1) / max(SAMPLED_FRAMES - 1, 1)) for i in range(SAMPLED_FRAMES)})
    diffs = [float(np.abs(x - y).mean()) for x, y in zip(_thumbs(video, indices), _thumbs(reference, indices))]
    if diffs and max(diffs) > MAX_MEAN_DIFF:
        return (f"frames that differ by {max(diffs):.0f} grey levels on average at {THUMB}x{THUMB} "
                f"(a run of the same clip: under {MAX_MEAN_DIFF:g})")
    return None
