"""Walking the source video in the official ping-pong order, aligning each new frame exactly once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import InvalidInputError
from engine.pipeline.frames import FrameStore, first_source_needed_again, pingpong_index


@dataclass
class SourceItem:
    """One source frame ready for a chunk."""

    source_index: int
    frame: np.ndarray  # [H,W,3] uint8, the original frame
    matrix: np.ndarray | None  # [2,3] float32 affine (frame -> crop); None without a face
    face: np.ndarray | None = None  # [R,R,3] uint8 aligned face
    # Cached VAE posteriors (avatars): ((mean, std) of masked faces, (mean, std) of reference faces).
    posterior: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def has_face(self) -> bool:
        return self.matrix is not None


def as_rgb_frame(frame, index: int) -> np.ndarray:
    """Accept an [H,W,3] uint8 array or anything with `.rgb` (engine.media.VideoFrame)."""
    frame = getattr(frame, "rgb", frame)
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        found = f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {tuple(getattr(frame, 'shape', ()))}"
        raise InvalidInputError(f"frame {index}: expected uint8 array [H,W,3], found {found}")
    return frame


class Cursor:
    """An endless iterator of SourceItems in output order; `take(n)` gets the next chunk's worth."""

    def __iter__(self):
        return self

    def take(self, n: int) -> list[SourceItem]:
        return [next(self) for _ in range(n)]

    def close(self) -> None:
        pass


class SourceCursor(Cursor):
    """Yields source frames forever: 0..T-1, T-1..0, 0..T-1, ... (official `loop_video`).

    Faces are found and aligned once per source frame, in the original order, so
    the aligner's smoothing state evolves exactly as in the official pipeline;
    revisited frames reuse their stored matrix and are re-warped (deterministic).
    Only frames that a reversed pass may revisit are kept (see `FrameStore`).
    """

    def __init__(self, frames: Iterable, faces, aligner, *, num_output: int | None = None,
                 num_source_estimate: int | None = None, timer=None, keep_frames: bool = True,
                 exact_count: bool = False) -> None:
        from engine.pipeline.core import StageTimer

        self._frames = iter(frames)
        self._faces = faces
        self._aligner = aligner
        self._timer = timer or StageTimer()
        if not keep_frames:  # single forward pass (avatar preparation): nothing is revisited
            self._keep_from = float("inf")
        elif num_output is None:
            self._keep_from = 0
        else:
            self._keep_from = first_source_needed_again(num_output, num_source_estimate, exact=exact_count)
        self._store = FrameStore()
        self._matrices: dict[int, np.ndarray | None] = {}
        self.num_source: int | None = None  # T, known once the frames run out
        self.position = 0  # output frames handed out so far

    def __next__(self) -> SourceItem:
        j = self.position
        item = self._decode_next(j) if self.num_source is None else None
        if item is None:
            if self._keep_from == float("inf"):  # a single forward pass: nothing was kept to revisit
                raise StopIteration
            s = pingpong_index(j, self.num_source)
            frame = self._store.get(s)
            matrix = self._matrices[s]
            face = None
            if matrix is not None:
                with self._timer.measure("face"):
                    crop = self._aligner.align_batch(torch.from_numpy(np.ascontiguousarray(frame))[None], matrix[None])[0]
                    face = self._aligner.resize_to_model(crop.cpu().numpy())
            item = SourceItem(s, frame, matrix, face)
        self.position += 1
        return item

    def _decode_next(self, j: int) -> SourceItem | None:
        with self._timer.measure("decode"):
            frame = next(self._frames, None)
        if frame is None:
            if j == 0:
                raise InvalidInputError("video: expected at least one frame, found none")
            self.num_source = j
            return None
        frame = as_rgb_frame(frame, j)
        with self._timer.measure("face"):
            landmarks = self._faces.landmarks(j, frame)
            matrix = face = None
            if landmarks is not None:
                crop, matrix = self._aligner.align(frame, landmarks)
                face = self._aligner.resize_to_model(crop)
        self._matrices[j] = matrix
        if j >= self._keep_from:
            self._store.put(j, frame)
        return SourceItem(j, frame, matrix, face)

    def close(self) -> None:
        self._store.close()
