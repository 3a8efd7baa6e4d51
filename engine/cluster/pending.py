"""What the batch runners share: a job waiting to run and a runner's result.

Its own module so that `engine.cluster.batch` (the entry point) imports `engine.cluster.ray_batch` (the Ray
variant) and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.cluster.manifest import BatchJob
from engine.cluster.outcome import JobOutcome


@dataclass
class PendingJob:
    """A job to run, the fingerprint the driver computed for it, and its attempts so far."""

    job: BatchJob
    fingerprint: dict
    attempt: int = 1
    history: list[str] = field(default_factory=list)  # why earlier attempts ended
    tried: set[str] = field(default_factory=set)  # workers that died running it


@dataclass(frozen=True)
class RunResult:
    outcomes: list[JobOutcome]
    workers: int
    startup_seconds: float  # cluster start + model loading, before the first job could start
    runner: str
