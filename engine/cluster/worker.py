"""A batch worker: one loaded `LipSync` that takes jobs, in this process or as a long-lived Ray actor.

The worker hashes the inputs it reads itself. When the driver's hashes (what it decided to run) differ
from the worker's, the two do not see the same files: the job fails with that reason instead of
recording an output made from other inputs (inputs must be on storage every worker reads).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.cluster.fingerprint import ContentHashes, job_fingerprint, write_sidecar
from engine.cluster.manifest import BatchJob
from engine.cluster.options import ModelOptions
from engine.cluster.outcome import DONE, FAILED, JobOutcome
from engine.cluster.sdk_bridge import submit_job
from engine.errors import EngineError

log = logging.getLogger(__name__)


def failure(job: BatchJob, exc: BaseException, *, attempts: int, worker: str | None) -> JobOutcome:
    """A failed outcome from the job's exception (typed errors keep their class and exit code)."""
    return JobOutcome(line=job.line, id=job.id, output=job.output, status=FAILED, reason=str(exc) or repr(exc),
                      error=type(exc).__name__, exit_code=getattr(exc, "exit_code", None) or 1, attempts=attempts,
                      worker=worker)


class JobRunner:
    """Loads the models once (`ModelOptions.load`) and runs jobs on them; safe to call from several threads."""

    def __init__(self, options: ModelOptions, name: str = "local") -> None:
        self.options = options
        self.name = name
        self.hashes = ContentHashes()
        t0 = time.perf_counter()
        self.sync = options.load()
        self.load_seconds = time.perf_counter() - t0

    def info(self) -> dict:
        """Who this worker is (for the report and for tests that kill one)."""
        placement = self.sync.placement
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), "device": str(placement.device),
                "dtype": placement.dtype_name, "load_seconds": round(self.load_seconds, 3)}

    def start(self, job: BatchJob, *, attempt: int = 1, expected: dict | None = None,
              progress: Callable[[int, int], None] | None = None) -> "StartedJob":
        """Hash the inputs and hand the job to the SDK (which may queue it beside others); never raises."""
        started = StartedJob(job, attempt, time.perf_counter())
        try:
            started.fingerprint = job_fingerprint(job, self.options, self.hashes)
            if expected is not None and expected["inputs"] != started.fingerprint["inputs"]:
                raise EngineError(f"inputs of line {job.line}: expected the content the batch driver hashed, found "
                                  f"other content on worker {self.name}; inputs must be on storage every worker reads")
            started.handle = submit_job(self.sync, job, progress)
        except Exception as exc:  # noqa: BLE001 - one bad input fails its job only, never the batch
            started.error = exc
        return started

    def finish(self, started: "StartedJob") -> JobOutcome:
        """Wait for a started job, record it beside its output; every failure becomes a failed outcome."""
        job = started.job
        try:
            if started.error is not None:
                raise started.error
            result = started.handle.result()
            write_sidecar(job, started.fingerprint, self.hashes, {**result.to_json(), "worker": self.name})
        except Exception as exc:  # noqa: BLE001 - one bad input fails its job only, never the batch
            if not isinstance(exc, EngineError):
                log.error("line %d: unexpected failure", job.line, exc_info=exc)
            outcome = failure(job, exc, attempts=started.attempt, worker=self.name)
        else:
            outcome = JobOutcome(line=job.line, id=job.id, output=job.output, status=DONE, reason=result.summary(),
                                 attempts=started.attempt, worker=self.name, frames=result.num_frames,
                                 seconds=round(result.wall_seconds, 3))
        if not outcome.seconds:  # failed: the time until it failed
            outcome.seconds = round(time.perf_counter() - started.t0, 3)
        return outcome

    def run(self, job: BatchJob, **kw) -> JobOutcome:
        return self.finish(self.start(job, **kw))


@dataclass
class StartedJob:
    job: BatchJob
    attempt: int
    t0: float
    fingerprint: dict | None = None
    handle: object = None  # the SDK's JobHandle
    error: BaseException | None = None
