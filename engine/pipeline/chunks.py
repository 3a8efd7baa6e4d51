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
        from engine.pipeline.core import OutputFrame

        synced: dict[int, np.ndarray] = {}
        if output is not None:
            for stage, seconds in output.stage_seconds().items():  # this chunk's share of its batch
                self.timer.add(stage, seconds)
            kept = [n for n, k in enumerate(self.chosen) if k < self.emit]
            with torch.inference_mode(), self.timer.measure("restore"):
                ks = [self.chosen[n] for n in kept]
                if ks:
                    frames = torch.stack([self._frame_tensor(self.items[k]) for k in ks])  # [f,H,W,3] uint8
                    matrices = np.stack([self.items[k].matrix for k in ks])  # [f,2,3]
                    faces = output.faces[kept] if len(kept) != len(self.chosen) else output.faces
                    # `frames` is this chunk's own copy (stack copies): paste into it, not into another copy
                    restored = self.aligner.restore_batch(frames, faces, matrices, inplace=True).cpu().numpy()
                    synced = dict(zip(ks, restored))
        return [  # has_face: the frame has a face (a strict-faces scan passes it through without generating)
            OutputFrame(index=j, source_index=item.source_index, rgb=synced.get(k, item.frame), has_face=item.has_face)
            for k, (j, item) in enumerate(zip(self.indices[:self.emit], self.items[:self.emit]))
        ]

    @staticmethod
    def _frame_tensor(item: SourceItem) -> torch.Tensor:
        if item.frame_tensor is not None:
            return item.frame_tensor
        frame = item.frame if item.frame.flags.writeable else np.array(item.frame)  # avatars: read-only memmaps
        return torch.from_numpy(frame)
