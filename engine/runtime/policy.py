"""How the engine core schedules work: batch size, waiting, fairness, queue bounds, failure handling."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidInputError, expect


@dataclass(frozen=True)
class EnginePolicy:
    """Policy knobs of one engine core (validated on construction, logged once when the core starts).

    Batching: chunk requests of one shape class (see `engine.runtime.requests.ShapeClass`) run as one
    U-Net call per step, at most `max_batch` requests at once. A partial batch launches as soon as its
    oldest request has waited `max_wait_ms`; 0 (the default) never delays work: requests that pile up
    while the device is busy run together in the next batch. Jobs take turns (round robin): the jobs
    served by a batch go to the back of the line. `same_job_batching` lets consecutive chunks of one
    job share a batch (single-job throughput on a large GPU); off by default so that a job running
    alone gives bit-identical frames run after run.
    """

    max_batch: int = 4  # chunk requests per U-Net call (CFG doubles the rows)
    max_wait_ms: float = 0.0  # how long a partial batch may wait for company
    same_job_batching: bool = False  # consecutive chunks of one job in one batch
    max_queued_chunks: int = 64  # device queue bound: submitting beyond it raises QueueFullError
    max_unet_rows: int | None = None  # U-Net batch rows per call (a TensorRT profile's batch; None: no cap)
    max_vae_rows: int | None = 32  # images per VAE call (bounds peak memory; None: a whole batch at once)
    max_active_jobs: int = 4  # offline jobs whose stages run at once
    max_queued_jobs: int = 64  # offline jobs waiting for a slot: beyond it submit raises QueueFullError
    prefetch_chunks: int = 2  # chunks a job prepares ahead of its finished output (memory stays flat)
    oom_retry: bool = True  # out of memory on a batch: retry its halves before failing the requests
    profile: bool = False  # synchronise the device at stage boundaries (exact stage times, slower)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queued_chunks", "max_active_jobs", "max_queued_jobs", "prefetch_chunks"):
            value = getattr(self, name)
            expect(isinstance(value, int) and value >= 1, InvalidInputError, f"EnginePolicy.{name}",
                   "an integer >= 1", value)
        expect(self.max_wait_ms >= 0, InvalidInputError, "EnginePolicy.max_wait_ms", ">= 0", self.max_wait_ms)
        for name in ("max_unet_rows", "max_vae_rows"):
            value = getattr(self, name)
            expect(value is None or (isinstance(value, int) and value >= 1), InvalidInputError,
                   f"EnginePolicy.{name}", "None or an integer >= 1", value)
        expect(self.max_queued_chunks >= self.max_batch, InvalidInputError, "EnginePolicy.max_queued_chunks",
               f">= max_batch ({self.max_batch})", self.max_queued_chunks)

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0
