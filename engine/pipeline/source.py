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
    face: np.ndarray | torch.Tensor | None = None  # [R,R,3] uint8 aligned face (a tensor on the run device)
    # Cached VAE posteriors (avatars): ((mean, std) of masked faces, (mean, std) of reference faces).
    posterior: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    frame_tensor: torch.Tensor | None = None  # `frame` already uploaded to the run device (restore reuses it)

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

    Faces are found once per source frame, in the original order, so the aligner's smoothing state
    evolves exactly as in the official pipeline; revisited frames reuse their stored matrix and are
    re-warped (deterministic). `take(n)` warps its faces as one batch on the aligner's device (the
    frames are uploaded once and kept on the items for restore); `device_faces` keeps the aligned
    faces there as tensors instead of bringing them back as arrays.
    Only frames that a reversed pass may revisit are kept (see `FrameStore`).
    """

    def __init__(self, frames: Iterable, faces, aligner, *, num_output: int | None = None,
                 num_source_estimate: int | None = None, timer=None, keep_frames: bool = True,
                 exact_count: bool = False, device_faces: bool = False) -> None:
        from engine.pipeline.core import StageTimer

        self._frames = iter(frames)
        self._faces = faces
        self._aligner = aligner
        self._timer = timer or StageTimer()
        self._device_faces = device_faces
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
        return self.take(1)[0]

    def take(self, n: int) -> list[SourceItem]:
        """The next `n` items (fewer only when a single forward pass ends; StopIteration when none is left)."""
        found: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        for _ in range(n):
            entry = self._next_source()
            if entry is None:
                break
            found.append(entry)
            self.position += 1
        if not found:
            raise StopIteration
        with_face = [k for k, (_, _, matrix) in enumerate(found) if matrix is not None]
        faces, uploaded = {}, {}
        if with_face:
            with self._timer.measure("face"):
                aligned, tensors = self._align([found[k][1] for k in with_face], [found[k][2] for k in with_face])
            faces = dict(zip(with_face, aligned))
            uploaded = dict(zip(with_face, tensors))
        return [SourceItem(s, frame, matrix, faces.get(k), frame_tensor=uploaded.get(k))
                for k, (s, frame, matrix) in enumerate(found)]

    def _next_source(self) -> tuple[int, np.ndarray, np.ndarray | None] | None:
        """(source index, frame, matrix) of the next output frame; None when a single pass has ended."""
        j = self.position
        entry = self._decode_next(j) if self.num_source is None else None
        if entry is not None:
            return entry
        if self._keep_from == float("inf"):  # a single forward pass: nothing was kept to revisit
            return None
        s = pingpong_index(j, self.num_source)
        return s, self._store.get(s), self._matrices[s]

    def _align(self, frames: list[np.ndarray], matrices: list[np.ndarray]) -> tuple[list, list]:
        """Aligned faces [R,R,3] uint8 of frames with a face, and the frames as uploaded (None on the CPU)."""
        aligner = self._aligner
        if aligner.device.type == "cpu":  # cv2's Lanczos per crop is fastest here; no copies of the frames (a
            # decoded frame's rows may be padded: the warp reads the strided view, only where the crop samples)
            crops = [aligner.align_batch(torch.from_numpy(f)[None], m[None])[0]
                     for f, m in zip(frames, matrices)]
            return [aligner.resize_to_model(c.numpy()) for c in crops], [None] * len(frames)
        from engine.runtime.transfer import to_device

        uploaded = [to_device(torch.from_numpy(np.ascontiguousarray(f)), aligner.device) for f in frames]
        if len({tuple(t.shape) for t in uploaded}) == 1:
            crops = aligner.align_batch(torch.stack(uploaded), np.stack(matrices))  # [N,h,w,3] on the device
        else:  # frame size changed inside the chunk: warp one by one
            crops = torch.cat([aligner.align_batch(t[None], m[None]) for t, m in zip(uploaded, matrices)])
        faces = aligner.resize_batch_to_model(crops)  # [N,R,R,3] uint8, bit-exact cv2 Lanczos port
        return (list(faces) if self._device_faces else list(faces.cpu().numpy())), uploaded

    def _decode_next(self, j: int) -> tuple[int, np.ndarray, np.ndarray | None] | None:
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
            matrix = None if landmarks is None else self._aligner.compute_matrices(landmarks)[0]
        self._matrices[j] = matrix
        if j >= self._keep_from:
            self._store.put(j, frame)
        return j, frame, matrix

    def close(self) -> None:
        self._store.close()
