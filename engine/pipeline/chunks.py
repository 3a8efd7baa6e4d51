"""One chunk's way through the stages: prepare (host side) -> device (engine core) -> finish (restore).

`prepare_chunk` turns aligned source items into a `ChunkWork` (masks and masked faces computed where
the faces already are, each tensor uploaded to the run device once); `PendingChunk.result()` waits
for the device output and restores the generated faces into their frames in the calling thread,
with the faces still on the run device.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import torch

from engine.pipeline.source import SourceItem

POLL_S = 0.05  # how often a wait for the device re-checks for cancellation


def prepare_chunk(items: list[SourceItem], chosen: list[int], audio_embeds: torch.Tensor, config, init_noise,
                  generator, *, device: torch.device, dtype: torch.dtype, first_frame: int):
    """A ChunkWork for items[chosen] (the frames with a face); audio_embeds [f,50,C] has one window per item."""
    from engine.face.mask import prepare_masks_and_masked_images
    from engine.runtime.requests import ChunkWork
    from engine.runtime.transfer import to_device

    faces = [items[k].face for k in chosen]
    if all(isinstance(face, torch.Tensor) for face in faces):
        stacked = to_device(torch.stack(faces), device)  # [f,R,R,3] uint8, already on the device
    else:
        stacked = to_device(torch.from_numpy(np.stack([np.asarray(face) for face in faces])), device)
    pixel, masked, masks = prepare_masks_and_masked_images(stacked)  # on the run device
    posterior = None
    if all(items[k].posterior is not None for k in chosen):  # prepared avatar: no VAE encode
        parts = [torch.stack([items[k].posterior[i][j] for k in chosen]) for i in (0, 1) for j in (0, 1)]
        posterior = tuple(to_device(p, device) for p in parts)
    audio = to_device(audio_embeds[chosen], device)
    return ChunkWork(pixel=pixel, masked=masked, masks=masks, audio=audio, init_noise=init_noise, generator=generator,
                     config=config, dtype=dtype, first_frame=first_frame, posterior=posterior)


class PendingChunk:
    """A chunk whose device work may still be running; `result()` gives its finished OutputFrames.

    Frames without a face pass through unchanged. Only the first `emit` frames are finished and
    returned (the output length policy may drop the end of the last chunk; its generated frames are
    the same either way). Safe to call from any thread; the restore runs once, in the first caller.
    """

    def __init__(self, items: list[SourceItem], indices: list[int], chosen: list[int], future: Future | None,
                 aligner, timer, *, emit: int | None = None) -> None:
        self.items, self.indices, self.chosen, self.future = items, indices, chosen, future
        self.aligner, self.timer = aligner, timer
        self.emit = len(items) if emit is None else emit
        self._lock = threading.Lock()
        self._frames = None

    @property
    def frames(self) -> int:
        return self.emit

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def cancel(self) -> bool:
        return self.future is not None and self.future.cancel()

    def result(self, timeout: float | None = None, *, cancelled=None) -> list:
        """The finished frames; raises the chunk's typed error, TimeoutError, or CancelledError once
        `cancelled()` turns true while waiting for the device."""
        with self._lock:
            if self._frames is None:
                self._frames = self._finish(self._device_output(timeout, cancelled))
            return self._frames

    def _device_output(self, timeout: float | None, cancelled):
        if self.future is None:
            return None
        if cancelled is None:
            return self.future.result(timeout)  # raises the request's typed error
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if cancelled():
                raise CancelledError()
            wait = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
            try:
                return self.future.result(wait)
            except FutureTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def _finish(self, output) -> list:
        return [frame for group in self._restored_groups(output, [self.emit]) for frame in group]

    def iter_result(self, *, first_group: int = 1, cancelled=None):
        """The finished frames as they are restored, a few at a time, so the first ones are out sooner: groups of
        `first_group`, then of the CPU restore pass (restore.CPU_FRAMES_PER_PASS); one group on a GPU. The same
        frames as `result()`. Waits for the device (raising as `result()` does) before it returns the iterator.
        For a chunk's one consumer (a streaming session's worker): it does not cache the frames."""
        from engine.face.restore import CPU_FRAMES_PER_PASS

        output = self._device_output(None, cancelled)
        if getattr(self.aligner, "device", None) is None or self.aligner.device.type == "cpu":
            sizes = [first_group] + [CPU_FRAMES_PER_PASS] * (self.emit // CPU_FRAMES_PER_PASS + 1)
        else:
            sizes = [self.emit]
        return (frame for group in self._restored_groups(output, sizes) for frame in group)

    def _restored_groups(self, output, sizes: list[int]):
        """Output frames in groups of `sizes` items (until `emit`), each group restored when it is reached."""
        from engine.pipeline.core import OutputFrame

        if output is not None:
            for stage, seconds in output.stage_seconds().items():  # this chunk's share of its batch
                self.timer.add(stage, seconds)
        row_of = {k: n for n, k in enumerate(self.chosen)}  # item -> row of the device output
        start = 0
        for size in sizes:
            stop = min(self.emit, start + max(1, size))
            if start >= stop:
                return
            synced = {} if output is None else self._restore_rows(output, [row_of[k] for k in range(start, stop)
                                                                           if k in row_of])
            # has_face: the frame has a face (a strict-faces scan passes it through without generating)
            yield [OutputFrame(index=self.indices[k], source_index=self.items[k].source_index,
                               rgb=synced.get(k, self.items[k].frame), has_face=self.items[k].has_face)
                   for k in range(start, stop)]
            start = stop

    def _restore_rows(self, output, rows: list[int]) -> dict[int, np.ndarray]:
        """Paste the generated faces of device-output `rows` into their frames: {item position: frame}."""
        if not rows:
            return {}
        with torch.inference_mode(), self.timer.measure("restore"):
            ks = [self.chosen[n] for n in rows]
            frames = torch.stack([self._frame_tensor(self.items[k]) for k in ks])  # [f,H,W,3] uint8
            matrices = np.stack([self.items[k].matrix for k in ks])  # [f,2,3]
            faces = output.faces[rows] if len(rows) != len(self.chosen) else output.faces
            # `frames` is this chunk's own copy (stack copies): paste into it, not into another copy
            restored = self.aligner.restore_batch(frames, faces, matrices, inplace=True).cpu().numpy()
        return dict(zip(ks, restored))

    @staticmethod
    def _frame_tensor(item: SourceItem) -> torch.Tensor:
        if item.frame_tensor is not None:
            return item.frame_tensor
        frame = item.frame if item.frame.flags.writeable else np.array(item.frame)  # avatars: read-only memmaps
        return torch.from_numpy(frame)
