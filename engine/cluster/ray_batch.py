"""A batch on a Ray cluster: long-lived actors that each load the models once and take jobs.

One actor per GPU (`num_gpus` per actor, default 1 where the cluster has GPUs) or, on a CPU-only
cluster, one per `num_cpus` CPUs. Each actor takes up to `jobs_per_worker` jobs at once (its threads
hand them to its engine core, which batches them). A worker process that dies (killed, OOM, node
lost) fails only the jobs it was running; each goes back to the queue for another actor, up to
`max_attempts` attempts, then is reported failed with every death it saw. Ray restarts a dead actor
(`max_restarts`); it takes jobs again once it has reloaded its models.

Workers report job starts and frame progress to a small event actor that the driver polls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.cluster.pending import PendingJob, RunResult
from engine.cluster.options import ModelOptions
from engine.cluster.outcome import FAILED, JobOutcome
from engine.cluster.progress import BatchProgress
from engine.errors import EngineError, InvalidInputError, expect

log = logging.getLogger("engine.batch")

POLL_S = 0.5  # how often the driver looks at finished jobs and progress events
REPORT_EVERY_S = 0.5  # a worker reports frame progress at most this often per job
WORKER_DIED = "worker died"
REVIVE_RETRY_S = 1.0  # a restarting actor answers "unavailable": ask again this much later (up to start_timeout_s)


@dataclass(frozen=True)
class RayOptions:
    """`engine batch --ray ADDRESS` options."""

    address: str = "local"
    workers: int | None = None  # None: one per GPU (or per num_cpus CPUs); never more than the jobs to run
    num_gpus: float | None = None  # per actor; None: 1 where the cluster has GPUs, else 0
    num_cpus: float = 1.0  # per actor
    jobs_per_worker: int = 2  # jobs an actor holds at once (its engine core batches them)
    max_attempts: int = 3  # tries per job when workers die under it
    max_restarts: int = 3  # times Ray restarts a dead actor
    start_timeout_s: float = 900.0  # actors not up by then (no resources, model load hanging) are given up

    def __post_init__(self) -> None:
        expect(self.workers is None or self.workers >= 1, InvalidInputError, "--workers", ">= 1", self.workers)
        expect(self.num_gpus is None or self.num_gpus >= 0, InvalidInputError, "--num-gpus", ">= 0", self.num_gpus)
        expect(self.num_cpus > 0, InvalidInputError, "--num-cpus", "> 0", self.num_cpus)
        expect(self.jobs_per_worker >= 1, InvalidInputError, "--jobs-per-worker", ">= 1", self.jobs_per_worker)
        expect(self.max_attempts >= 1, InvalidInputError, "--max-attempts", ">= 1", self.max_attempts)
        expect(self.max_restarts >= 0, InvalidInputError, "--max-restarts", ">= 0", self.max_restarts)


class EventSink:
    """A tiny actor collecting (kind, ...) tuples from workers; the driver drains it."""

    def __init__(self) -> None:
        self._events: list[tuple] = []

    def report(self, event: tuple) -> None:
        self._events.append(event)

    def drain(self) -> list[tuple]:
        events, self._events = self._events, []
        return events


class BatchActor:
    """The actor body: a JobRunner, plus the load error (reported by `info`, never raised from __init__)."""

    def __init__(self, options: ModelOptions, name: str, sink_name: str) -> None:
        import ray

        from engine.cluster.worker import JobRunner

        self.name = name
        self.sink = ray.get_actor(sink_name)  # by name: a restarted actor finds it again without stored arguments
        self.runner, self.error = None, None
        try:
            self.runner = JobRunner(options, name)
        except Exception as exc:  # noqa: BLE001 - sent to the driver, which raises it typed
            log.exception("worker %s: loading the models failed", name)
            self.error = exc

    def info(self) -> dict:
        if self.error is not None:
            return {"name": self.name, "error": type(self.error).__name__, "message": str(self.error),
                    "exit_code": getattr(self.error, "exit_code", 1)}
        return self.runner.info()

    def run(self, pending: PendingJob) -> JobOutcome:
        job = pending.job
        self.sink.report.remote(("start", job.line, pending.attempt, self.name, os.getpid()))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= REPORT_EVERY_S:
                last[0] = now
                self.sink.report.remote(("frames", job.line, done, total))

        if self.runner is None:
            from engine.cluster.worker import failure

            return failure(job, self.error, attempts=pending.attempt, worker=self.name)
        return self.runner.run(job, attempt=pending.attempt, expected=pending.fingerprint, progress=progress)


@dataclass
class _Worker:
    name: str
    actor: object
    capacity: int
    running: set = field(default_factory=set)  # in-flight ObjectRefs
    state: str = "starting"  # starting | ready | reviving | dead
    info: dict = field(default_factory=dict)
    deaths: int = 0
    died_at: float = 0.0  # time.monotonic() of the last death
    ask_again_at: float | None = None  # when to ask a restarting actor for info() again

    @property
    def free(self) -> int:
        return self.capacity - len(self.running) if self.state == "ready" else 0


def _worker_count(ray, options: RayOptions, jobs: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster, never more actors than jobs."""
    from engine.cluster.ray_env import actor_layout

    count, num_gpus = actor_layout(ray, num_gpus=options.num_gpus, num_cpus=options.num_cpus,
                                   requested=options.workers)
    return max(1, min(count, jobs)), num_gpus


def _actor_model(model: ModelOptions, num_gpus: float) -> ModelOptions:
    """Inside an actor its GPU is cuda:0 (Ray sets CUDA_VISIBLE_DEVICES), so cuda:N means cuda."""
    if model.device.startswith("cuda:"):
        log.info("--device %s: each Ray worker sees its own GPU as cuda:0; using cuda", model.device)
        return dataclasses.replace(model, device="cuda")
    if num_gpus == 0 and model.device == "cuda":
        raise InvalidInputError("--device cuda with --num-gpus 0: expected GPUs per worker > 0, found 0")
    return model


def _raise_load_error(info: dict) -> None:
    import engine.errors as errors

    cls = getattr(errors, info["error"], None)
    cls = cls if isinstance(cls, type) and issubclass(cls, EngineError) else EngineError
    raise cls(f"worker {info['name']}: {info['message']}")


class _Dispatcher:
    """The driver's loop: hand jobs to workers with room, collect outcomes, re-queue jobs of dead workers."""

    def __init__(self, ray, workers: list[_Worker], sink, todo: list[PendingJob], options: RayOptions,
                 progress: BatchProgress, on_event: Callable[[tuple], None] | None) -> None:
        self.ray, self.workers, self.sink = ray, workers, sink
        self.queue: deque[PendingJob] = deque(todo)
        self.options, self.progress, self.on_event = options, progress, on_event
        self.inflight: dict = {}  # ObjectRef -> (PendingJob, _Worker)
        self.reviving: dict = {}  # ObjectRef of info() -> _Worker
        self.outcomes: list[JobOutcome] = []

    def run(self) -> list[JobOutcome]:
        from ray.exceptions import GetTimeoutError

        while self.queue or self.inflight:
            self._ask_restarting()
            self._dispatch()
            if not self.inflight and not self.reviving and not self._restarting():
                self._fail_rest("no worker is left to run it: " + self._deaths())
                break
            waiting = [*self.inflight, *self.reviving]
            ready = self.ray.wait(waiting, num_returns=1, timeout=POLL_S)[0] if waiting else []
            if not waiting:
                time.sleep(POLL_S)
            try:
                self._events(self.ray.get(self.sink.drain.remote(), timeout=30))
            except GetTimeoutError:
                pass
            for ref in ready:
                if ref in self.reviving:
                    self._revived(ref)
                else:
                    self._collect(ref)
        self._events(self.ray.get(self.sink.drain.remote()))
        return self.outcomes

    def _dispatch(self) -> None:
        for pending in list(self.queue):
            ready = [w for w in self.workers if w.free > 0]
            if not ready:
                return
            fresh = [w for w in ready if w.name not in pending.tried]  # prefer a worker that did not die on it
            worker = max(fresh or ready, key=lambda w: w.free)
            self.queue.remove(pending)
            ref = worker.actor.run.remote(pending)
            worker.running.add(ref)
            self.inflight[ref] = (pending, worker)

    def _collect(self, ref) -> None:
        from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

        pending, worker = self.inflight.pop(ref)
        worker.running.discard(ref)
        try:
            outcome = self.ray.get(ref)
        except (RayActorError, WorkerCrashedError, ObjectLostError) as exc:
            self._worker_died(pending, worker, exc)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the outcome could not be sent back
            from engine.cluster.worker import failure

            outcome = failure(pending.job, exc, attempts=pending.attempt, worker=worker.name)
        outcome.history = pending.history + outcome.history
        self._finished(outcome)

    def _worker_died(self, pending: PendingJob, worker: _Worker, exc: BaseException) -> None:
        why = f"{WORKER_DIED}: {worker.name} (pid {worker.info.get('pid', '?')}) ended while running it " \
              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        pending.history.append(why)
        pending.tried.add(worker.name)
        if worker.state == "ready":
            worker.deaths += 1
            worker.died_at = time.monotonic()
            worker.state = "reviving"  # Ray restarts it (max_restarts); info() answers once it reloaded
            self.reviving[worker.actor.info.remote()] = worker
        if pending.attempt >= self.options.max_attempts:
            self._finished(JobOutcome(
                line=pending.job.line, id=pending.job.id, output=pending.job.output, status=FAILED,
                reason=f"{why}; gave up after {pending.attempt} attempt(s)", error=WORKER_DIED, exit_code=1,
                attempts=pending.attempt, worker=worker.name, history=pending.history))
            return
        pending.attempt += 1
        self.queue.appendleft(pending)
        self.progress.retrying(pending.job.line, why)

    def _revived(self, ref) -> None:
        from ray.exceptions import RayActorError

        worker = self.reviving.pop(ref)
        try:
            info = self.ray.get(ref)
        except RayActorError as exc:
            if _restarting(exc) and time.monotonic() - worker.died_at < self.options.start_timeout_s:
                worker.ask_again_at = time.monotonic() + REVIVE_RETRY_S  # Ray is restarting it: not gone
                log.info("worker %s is restarting", worker.name)
                return
            worker.state = "dead"
            log.warning("worker %s is gone for good: %s", worker.name, str(exc).splitlines()[0])
            return
        if "error" in info:
            worker.state = "dead"
            log.warning("worker %s could not reload its models: %s", worker.name, info["message"])
            return
        worker.info, worker.state = info, "ready"
        log.info("worker %s is back (pid %s)", worker.name, info.get("pid"))

    def _restarting(self) -> list[_Worker]:
        return [w for w in self.workers if w.state == "reviving" and w.ask_again_at is not None]

    def _ask_restarting(self) -> None:
        """Ask restarting actors again whether they are back (once due)."""
        now = time.monotonic()
        for worker in self._restarting():
            if worker.ask_again_at <= now:
                worker.ask_again_at = None
                self.reviving[worker.actor.info.remote()] = worker

    def _finished(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)
        self.progress.finished(outcome)

    def _fail_rest(self, why: str) -> None:
        while self.queue:
            pending = self.queue.popleft()
            self._finished(JobOutcome(
                line=pending.job.line, id=pending.job.id, output=pending.job.output, status=FAILED, reason=why,
                error=WORKER_DIED, exit_code=1, attempts=pending.attempt - 1, history=pending.history))

    def _deaths(self) -> str:
        return ", ".join(f"{w.name} died {w.deaths} time(s)" for w in self.workers) or "no workers"

    def _events(self, events: list[tuple]) -> None:
        for event in events:
            if event[0] == "frames":
                self.progress.frames(event[1], event[2], event[3])
            if self.on_event is not None:
                self.on_event(event)


def _restarting(exc: BaseException) -> bool:
    """True when Ray says the actor is being restarted (ActorUnavailableError), not that it died for good."""
    from ray.exceptions import ActorDiedError

    return not isinstance(exc, ActorDiedError) and ("restarting" in str(exc).lower()
                                                    or type(exc).__name__ == "ActorUnavailableError")


def remove_partials_of(todo: list[PendingJob]) -> None:
    """Remove the `.partial` files that killed workers of this host left beside the jobs' outputs (a worker on
    another host leaves its own; the next job writing there removes it: engine.media.paths)."""
    from engine.media.paths import remove_stale_partials

    for folder in {os.path.dirname(p.job.output) for p in todo}:
        remove_stale_partials(folder)


def start_workers(ray, model: ModelOptions, options: RayOptions, jobs: int, sink_name: str) -> list[_Worker]:
    """Create the actors and wait until each has loaded its models (or failed to)."""
    count, num_gpus = _worker_count(ray, options, jobs)
    model = _actor_model(model, num_gpus)
    actor_cls = ray.remote(BatchActor).options(
        num_cpus=options.num_cpus, num_gpus=num_gpus, max_restarts=options.max_restarts, max_task_retries=0,
        max_concurrency=options.jobs_per_worker)
    workers = [_Worker(f"worker-{i}", actor_cls.remote(model, f"worker-{i}", sink_name), options.jobs_per_worker)
               for i in range(count)]
    log.info("starting %d Ray worker(s): %g CPU and %g GPU each, %d job(s) at a time each", count,
             options.num_cpus, num_gpus, options.jobs_per_worker)
    refs = {w.actor.info.remote(): w for w in workers}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=options.start_timeout_s)
    errors = []
    for ref in ready:
        worker = refs[ref]
        try:
            worker.info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor process died while loading
            worker.info = {"name": worker.name, "error": "EngineError", "message": f"{type(exc).__name__}: {exc}"}
        if "error" in worker.info:
            worker.state = "dead"
            errors.append(worker.info)
        else:
            worker.state = "ready"
    for ref in late:
        refs[ref].state = "dead"
        ray.kill(refs[ref].actor, no_restart=True)
        errors.append({"name": refs[ref].name, "error": "EngineError",
                       "message": f"not started within {options.start_timeout_s:g} s (no free resources?)"})
    if not any(w.state == "ready" for w in workers):
        _raise_load_error(errors[0])
    for info in errors:
        log.warning("worker %s unusable: %s: %s", info["name"], info["error"], info["message"])
    return workers


def run_on_ray(todo: list[PendingJob], model: ModelOptions, progress: BatchProgress, options: RayOptions, *,
               on_event: Callable[[tuple], None] | None = None) -> RunResult:
    """Run `todo` on the cluster at `options.address`; startup_seconds covers connecting and model loading."""
    from engine.cluster.ray_env import connected

    t0 = time.perf_counter()
    with connected(options.address, what="engine batch --ray") as ray:
        sink_name = f"lipsync-batch-events-{uuid.uuid4().hex[:12]}"
        sink = ray.remote(EventSink).options(num_cpus=0, name=sink_name).remote()
        workers = start_workers(ray, model, options, len(todo), sink_name)
        startup = time.perf_counter() - t0
        try:
            outcomes = _Dispatcher(ray, workers, sink, todo, options, progress, on_event).run()
        finally:
            for worker in workers:
                ray.kill(worker.actor, no_restart=True)
            ray.kill(sink, no_restart=True)
            remove_partials_of(todo)
    usable = sum(1 for w in workers if w.info and "error" not in w.info)
    return RunResult(outcomes, workers=usable, startup_seconds=startup, runner=f"ray {options.address}")
