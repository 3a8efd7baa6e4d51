"""What a chunk request carries to the device thread, and which requests may share one U-Net call."""

from __future__ import annotations

import time
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.errors import InvalidInputError, expect

if TYPE_CHECKING:  # a type only: the runtime does not import the pipeline (which imports the runtime)
    from engine.pipeline.config import SyncConfig

Posterior = tuple[Tensor, Tensor, Tensor, Tensor]  # (masked mean, masked std, ref mean, ref std), each [f,4,h,w]


@dataclass(frozen=True)
class ShapeClass:
    """Requests that agree on all of these run in lockstep in one batch.

    The frame count must match because the U-Net's GroupNorm statistics span a clip's frames (a tail
    chunk cannot ride with full chunks); steps, guidance and the DeepCache interval because every row
    takes the same timesteps and the same full/shallow passes.
    """

    frames: int
    latent_size: int
    guidance_scale: float
    steps: int
    deepcache_interval: int | None
    eta: float
    dtype: torch.dtype

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def unet_rows(self) -> int:
        """U-Net batch rows per request (CFG: unconditional and audio-conditioned)."""
        return 2 if self.uses_cfg else 1


@dataclass(eq=False)
class ChunkWork:
    """Device inputs of one chunk: only its frames with a face, already on the run device.

    `generator` is the job's own; the device thread draws from it, in the official order, the
    masked-image posterior sample and then the reference posterior sample (skipped draws are
    impossible: avatar chunks carry `posterior` and still sample from it).
    """

    pixel: Tensor  # [f,3,R,R] float32 in [-1,1]
    masked: Tensor  # [f,3,R,R] float32, pixel * mask
    masks: Tensor  # [f,1,R,R] float32 (1 = keep)
    audio: Tensor  # [f,50,C] audio windows
    init_noise: Tensor  # [1,4,1,h,w] the job's noise frame
    generator: torch.Generator
    config: SyncConfig
    dtype: torch.dtype
    first_frame: int = 0  # output index of the chunk's first frame (for error messages)
    posterior: Posterior | None = None  # a prepared avatar's cached posteriors (no VAE encode)

    def __post_init__(self) -> None:
        f = self.pixel.shape[0]
        expect(self.pixel.ndim == 4 and self.pixel.shape[1] == 3 and f >= 1, InvalidInputError, "chunk pixels",
               "[f,3,R,R] with f >= 1", tuple(self.pixel.shape))
        for name, tensor, channels in (("masked", self.masked, 3), ("masks", self.masks, 1)):
            want = (f, channels, *self.pixel.shape[2:])
            expect(tuple(tensor.shape) == want, InvalidInputError, f"chunk {name}", want, tuple(tensor.shape))
        expect(self.audio.ndim == 3 and self.audio.shape[0] == f, InvalidInputError, "chunk audio windows",
               f"[{f},50,C]", tuple(self.audio.shape))
        h = self.pixel.shape[-1] // 8
        expect(tuple(self.init_noise.shape) == (1, 4, 1, h, h), InvalidInputError, "chunk init noise",
               (1, 4, 1, h, h), tuple(self.init_noise.shape))
        if self.posterior is not None:
            for tensor in self.posterior:
                expect(tuple(tensor.shape) == (f, 4, h, h), InvalidInputError, "chunk posterior", (f, 4, h, h),
                       tuple(tensor.shape))

    @property
    def frames(self) -> int:
        return int(self.pixel.shape[0])

    @property
    def frame_range(self) -> tuple[int, int]:
        return self.first_frame, self.first_frame + self.frames

    @property
    def shape(self) -> ShapeClass:
        c = self.config
        return ShapeClass(frames=self.frames, latent_size=self.pixel.shape[-1] // 8, guidance_scale=c.guidance_scale,
                          steps=c.steps, deepcache_interval=c.effective_deepcache, eta=c.eta, dtype=self.dtype)


@dataclass(eq=False)
class Request:
    """One queued piece of device work and the future its submitter waits on."""

    job: Hashable  # requests of one job run in submission order (they share its generator)
    shape: ShapeClass
    work: ChunkWork
    future: Future = field(default_factory=Future)
    deadline: float | None = None  # time.monotonic() after which it is dropped instead of run
    enqueued: float = field(default_factory=time.monotonic)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline
