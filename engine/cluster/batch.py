"""Run a validated manifest: skip what is up to date, run the rest here or on Ray, report every job.

`run_batch` is what `engine batch` calls. Locally one `JobRunner` (one set of loaded models, one engine
core) takes every job; up to `in_flight` jobs are handed to the SDK at once so the core can batch them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict

from engine.cluster.fingerprint import ContentHashes, job_fingerprint, up_to_date
from engine.cluster.manifest import BatchJob, JobSettings, load_manifest
from engine.cluster.options import ModelOptions
from engine.cluster.outcome import SKIPPED, BatchReport, JobOutcome
from engine.cluster.pending import PendingJob, RunResult  # noqa: F401 - also their old home for importers
from engine.cluster.progress import BatchProgress
from engine.errors import EngineError

log = logging.getLogger("engine.batch")


def plan(jobs: list[BatchJob], model: ModelOptions, *, force: bool = False,
         hashes: ContentHashes | None = None) -> tuple[list[PendingJob], list[JobOutcome]]:
    """(jobs to run, outcomes of the jobs skipped because their outputs are up to date)."""
    hashes = hashes or ContentHashes()
    todo: list[PendingJob] = []
    skipped: list[JobOutcome] = []
    for job in jobs:
        fingerprint = job_fingerprint(job, model, hashes)
        done, why = up_to_date(job, fingerprint, hashes)
        if done and not force:
            skipped.append(JobOutcome(line=job.line, id=job.id, output=job.output, status=SKIPPED, reason=why))
        else:
            log.debug("line %d: runs (%s)", job.line, why)
            todo.append(PendingJob(job, fingerprint))
    return todo, skipped


def run_local(todo: list[PendingJob], model: ModelOptions, progress: BatchProgress, *,
              in_flight: int = 2) -> RunResult:
    """All jobs through one loaded `LipSync` in this process, at most `in_flight` handed to it at once."""
    from engine.cluster.worker import JobRunner

    t0 = time.perf_counter()
    runner = JobRunner(model, "local")
    startup = time.perf_counter() - t0
    outcomes: list[JobOutcome] = []
    window: deque = deque()
    queue = deque(todo)
    while queue or window:
        while queue and len(window) < max(1, in_flight):
            pending = queue.popleft()
            line = pending.job.line
            window.append(runner.start(pending.job, expected=pending.fingerprint,
                                       progress=lambda d, t, line=line: progress.frames(line, d, t)))
        outcome = runner.finish(window.popleft())
        progress.finished(outcome)
        outcomes.append(outcome)
    return RunResult(outcomes, workers=1, startup_seconds=startup, runner="local")


def run_batch(manifest: str, *, model: ModelOptions, defaults: JobSettings = JobSettings(), ray=None,
              force: bool = False, progress: bool | None = None, in_flight: int = 2,
              on_event: Callable[[tuple], None] | None = None, report: str | None = None) -> BatchReport:
    """Validate `manifest` (raises InvalidInputError before any work), then run it; `ray`: a RayOptions or None.

    `report`: the path the caller will write the report to, checked up front with every job's paths."""
    from engine.errors import InvalidInputError, expect

    expect(isinstance(in_flight, int) and in_flight >= 1, InvalidInputError, "--jobs-per-worker", ">= 1", in_flight)
    t0 = time.perf_counter()
    jobs = load_manifest(manifest, defaults, report=report)
    todo, skipped = plan(jobs, model, force=force)
    log.info("batch %s: %d jobs, %d up to date, %d to run", manifest, len(jobs), len(skipped), len(todo))
    bar = BatchProgress([p.job for p in todo], enabled=progress)
    try:
        if not todo:
            result = RunResult([], workers=0, startup_seconds=0.0, runner="none (all up to date)")
        elif ray is None:
            result = run_local(todo, model, bar, in_flight=in_flight)
        else:
            from engine.cluster.ray_batch import run_on_ray

            result = run_on_ray(todo, model, bar, ray, on_event=on_event)
    finally:
        bar.close()
    from engine.runtime.heap import peak_rss_mib

    by_line = {o.line: o for o in [*skipped, *result.outcomes]}
    missing = [j.line for j in jobs if j.line not in by_line]
    if missing:  # every job gets an outcome; a runner that lost one is a bug, not a silent success
        raise EngineError(f"batch: expected an outcome for every job, found none for lines {missing}")
    return BatchReport(manifest=str(manifest), runner=result.runner, workers=result.workers,
                       outcomes=[by_line[j.line] for j in jobs], wall_seconds=time.perf_counter() - t0,
                       startup_seconds=result.startup_seconds,
                       options={"model": asdict(model), "defaults": asdict(defaults), "force": force,
                                "ray": asdict(ray) if ray is not None else None},
                       peak_rss_mib=peak_rss_mib())
