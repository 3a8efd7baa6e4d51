"""Source-frame bookkeeping for the chunked core: the official ping-pong loop without holding the video in RAM."""

from __future__ import annotations

import os
import tempfile

import numpy as np


def pingpong_index(output_index: int, num_source: int) -> int:
    """Source frame behind output frame `output_index` (official `loop_video`).

    Copies of the video alternate forward and reversed: 0..T-1, T-1..0, 0..T-1, ...
    """
    if num_source <= 0:
        raise ValueError(f"num_source must be positive, got {num_source}")
    loop, k = divmod(output_index, num_source)
    return k if loop % 2 == 0 else num_source - 1 - k


def first_source_needed_again(num_output: int, num_source_estimate: int | None, *, exact: bool = False) -> int:
    """Smallest source index that a reversed copy may revisit (0 means keep everything).

    With L output frames and T source frames the reversed copy reaches down to
    source 2T - L. When T is only an estimate (container duration) a margin of
    64 frames plus 10 % is kept below that; an exact count keeps 2 spare frames.
    """
    if num_source_estimate is None or num_output > 2 * num_source_estimate:
        return 0
    margin = 2 if exact else 64 + num_source_estimate // 10
    return max(0, 2 * num_source_estimate - num_output - margin)


class FrameStore:
    """Keeps source frames that a ping-pong pass will revisit, with bounded RAM.

    Up to `ram_frames` frames stay in memory; older ones spill into an
    anonymous temporary file beside nothing else, removed on `close()`.
    """

    def __init__(self, *, ram_frames: int = 32, tmp_dir: str | None = None) -> None:
        self._ram: dict[int, np.ndarray] = {}
        self._ram_frames = ram_frames
        self._tmp_dir = tmp_dir
        self._file = None
        self._offsets: dict[int, tuple[int, tuple[int, ...]]] = {}

    def __contains__(self, index: int) -> bool:
        return index in self._ram or index in self._offsets

    def put(self, index: int, frame: np.ndarray) -> None:
        self._ram[index] = frame
        while len(self._ram) > self._ram_frames:
            oldest = min(self._ram)
            self._spill(oldest, self._ram.pop(oldest))

    def get(self, index: int) -> np.ndarray:
        if index in self._ram:
            return self._ram[index]
        if index not in self._offsets:
            raise KeyError(f"source frame {index} was not kept")
        offset, shape = self._offsets[index]
        self._file.seek(offset)
        data = self._file.read(int(np.prod(shape)))
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)

    def _spill(self, index: int, frame: np.ndarray) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._tmp_dir)
        self._file.seek(0, os.SEEK_END)
        offset = self._file.tell()
        self._file.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self._offsets[index] = (offset, frame.shape)

    def close(self) -> None:
        self._ram.clear()
        self._offsets.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


