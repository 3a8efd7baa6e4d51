"""The engine core: the one owner of the device. A single thread calls every network executor.

Front ends (the SDK's jobs, streaming sessions, the server, batch runners) submit chunk requests
and get futures back; the device thread batches requests that share a shape class (see
`engine.runtime.batcher`) and runs them with `engine.runtime.device_step.run_batch`. Other device
work (the whisper encoder, avatar VAE posteriors, warm-up) is submitted as calls and runs on the
same thread between batches. A failure fails only the requests of its batch; out of memory is
retried on halves of the batch (when allowed) and otherwise reported as `GpuOutOfMemoryError`
after releasing cached memory. Nothing else ever touches an executor.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from engine.errors import DeadlineExceededError, EngineError, GpuOutOfMemoryError, QueueFullError
from engine.runtime.heap import trim_heap
from engine.runtime.batcher import Batcher
from engine.runtime.device_step import ChunkCancelled, run_batch
from engine.runtime.policy import EnginePolicy
from engine.runtime.requests import ChunkWork, Request
from engine.runtime.timing import StageClock

log = logging.getLogger(__name__)

OOM_ERRORS = (torch.cuda.OutOfMemoryError,)  # torch.OutOfMemoryError on recent torch is the same class
BLOCK_POLL_S = 0.05  # how often a blocked submitter re-checks for cancellation / close
CANCELLED_MEMORY_S = 60.0  # a cancelled job's key is kept this long for the running batch to see it


@dataclass
class ChunkOutput:
    """What the device thread hands back for one request."""

    faces: torch.Tensor  # [f,3,R,R] pasted faces, run dtype, on the run device
    clock: StageClock  # the batch's stage marks (resolved lazily)
    share: float  # this request's share of the batch (its frames / the batch's frames)
    batch_size: int  # requests in the batch

    def stage_seconds(self) -> dict[str, float]:
        return {k: v * self.share for k, v in self.clock.seconds().items()}


@dataclass
class EngineStats:
    """Counters since start-up (read with `EngineCore.stats()`)."""

    batches: int = 0
    requests: int = 0
    failed_requests: int = 0
    expired_requests: int = 0
    calls: int = 0
    oom_events: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # requests per batch -> count
    busy_s: float = 0.0  # device time spent in batches and calls (CUDA events on a GPU)
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict:
        wall = time.monotonic() - self.started
        return {"batches": self.batches, "requests": self.requests, "failed_requests": self.failed_requests,
                "expired_requests": self.expired_requests, "calls": self.calls, "oom_events": self.oom_events,
                "batch_sizes": dict(sorted(self.batch_sizes.items())), "busy_s": round(self.busy_s, 4),
                "wall_s": round(wall, 4), "idle_fraction": round(max(0.0, 1 - self.busy_s / wall), 4) if wall else None}


class EngineCore:
    """Owns the runners (executors) of one model and the thread that alone calls them.

    `runners`: engine.backends.Runners. `fp32_decoder`: builds a float32 VAE decoder (scaled latents ->
    images) for the non-finite retry; called at most once, on the device thread. The thread starts on
    first use; `close()` stops and joins it (also done when the object is garbage-collected).
    """

    def __init__(self, runners, *, device: torch.device, policy: EnginePolicy | None = None,
                 fp32_decoder: Callable[[], Callable] | None = None) -> None:
        self.policy = policy or EnginePolicy()
        self.device = torch.device(device)
        self._loop = _DeviceLoop(runners, self.device, self.policy, fp32_decoder)
        self._finalizer = weakref.finalize(self, self._loop.stop)
        self.ready = False  # set once warm-up has run (see engine.pipeline.warmup)

    def submit(self, work: ChunkWork, *, job: Hashable, deadline: float | None = None,
               block: bool = False, cancelled: Callable[[], bool] | None = None) -> Future:
        """Queue one chunk; the future gives a `ChunkOutput` or raises the request's typed error.

        `deadline` is a `time.monotonic()` time: a request still queued then fails with
        DeadlineExceededError without device work. A full queue raises QueueFullError at once, unless
        `block` (internal producers with their own bound): then it waits for room while `cancelled()`
        is false.
        """
        request = Request(job=job, shape=work.shape, work=work, deadline=deadline)
        self._loop.submit(request, block=block, cancelled=cancelled)
        return request.future

    def submit_many(self, works: list[tuple[ChunkWork, Hashable, float | None]]) -> list[Future]:
        """Queue several chunks at once, atomically: (work, job, deadline) each; all or none (QueueFullError).

        What a batch runner uses to start many jobs' chunks together, so they can share a batch
        even with `max_wait_ms=0`.
        """
        requests = [Request(job=job, shape=work.shape, work=work, deadline=deadline) for work, job, deadline in works]
        self._loop.submit_all(requests)
        return [r.future for r in requests]

    def call(self, fn: Callable, *args, **kwargs):
        """Run `fn(*args, **kwargs)` on the device thread and return its result (inline when already there)."""
        return self.call_async(fn, *args, **kwargs).result()

    def call_async(self, fn: Callable, *args, **kwargs) -> Future:
        return self._loop.call(lambda: fn(*args, **kwargs))

    def cancel_job(self, job: Hashable) -> int:
        """Drop every queued request of `job` (their futures are cancelled); returns how many."""
        return self._loop.cancel_job(job)

    def queued_chunks(self, job: Hashable | None = None) -> int:
        """Chunks waiting for the device (of `job`, or of everyone)."""
        return self._loop.queued(job)

    @property
    def runners(self):
        """The executors' runners: for reading `choice`/placement. Calling them outside the device thread
        is a bug (use `call`)."""
        return self._loop.runners

    @property
    def on_device_thread(self) -> bool:
        return threading.current_thread() is self._loop.thread

    def stats(self) -> dict:
        return self._loop.stats_dict()

    @property
    def closed(self) -> bool:
        return self._loop.closed

    def close(self) -> None:
        """Fail what is still queued, stop the device thread and join it."""
        self._finalizer()


class _DeviceLoop:
    """The state shared with the device thread (the thread holds this, never the EngineCore)."""

    def __init__(self, runners, device: torch.device, policy: EnginePolicy, fp32_decoder) -> None:
        self.runners, self.device, self.policy = runners, device, policy
        self._fp32_factory, self._fp32 = fp32_decoder, None
        self._cond = threading.Condition()
        self._batcher = Batcher(max_batch=policy.max_batch, max_wait_s=policy.max_wait_s,
                                capacity=policy.max_queued_chunks, same_job_batching=policy.same_job_batching,
                                max_rows=policy.max_unet_rows)
        self._calls: deque[tuple[Callable, Future]] = deque()
        self.closed = False
        self.thread: threading.Thread | None = None
        self.stats = EngineStats()
        self._pending_clocks: list[StageClock] = []  # CUDA clocks not yet added to busy_s
        self._cancelled: dict = {}  # job -> when cancel_job was called: a running batch of only these stops early

    # ------------------------------------------------------------------ front-end side
    def _ensure_thread(self) -> None:  # under the lock
        if self.closed:
            raise EngineError("engine core: expected an open engine, found it closed")
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="lipsync-device", daemon=True)
            self.thread.start()
            log.info("engine core on %s: %s", self.device, self.policy)

    def submit(self, request: Request, *, block: bool, cancelled) -> None:
        with self._cond:
            self._ensure_thread()
            while block and self._batcher.full:
                if cancelled is not None and cancelled():
                    request.future.cancel()
                    return
                self._cond.wait(BLOCK_POLL_S)
                self._ensure_thread()
            self._batcher.add(request)  # raises QueueFullError at once when full
            self._cond.notify_all()

    def submit_all(self, requests: list[Request]) -> None:
        with self._cond:
            self._ensure_thread()
            room = self._batcher.capacity - len(self._batcher)
            if len(requests) > room:
                raise QueueFullError(f"engine queue: expected room for {len(requests)} chunks, found {room} "
                                     f"(EnginePolicy.max_queued_chunks = {self._batcher.capacity})")
            for request in requests:
                self._batcher.add(request)
            self._cond.notify_all()

    def call(self, fn: Callable) -> Future:
        future: Future = Future()
        if threading.current_thread() is self.thread:  # re-entrant (warm-up inside a call): run inline
            _resolve(future, fn)
            return future
        with self._cond:
            self._ensure_thread()
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future

    def _was_cancelled(self, request: Request) -> bool:
        """`cancel_job` was called for the request's job after the request was queued. A job key outlives a
        cancel (a streaming session interrupted by barge-in goes on with its next utterance): only what was
        queued before the cancel may stop."""
        cancelled_at = self._cancelled.get(request.job)
        return cancelled_at is not None and request.enqueued <= cancelled_at

    def cancel_job(self, job: Hashable) -> int:
        with self._cond:
            now = time.monotonic()
            self._cancelled = {j: t for j, t in self._cancelled.items() if now - t < CANCELLED_MEMORY_S}
            self._cancelled[job] = now
            removed = self._batcher.remove_job(job)
            self._cond.notify_all()
        for request in removed:
            request.future.cancel()
        return len(removed)

    def queued(self, job: Hashable | None) -> int:
        with self._cond:
            return len(self._batcher) if job is None else self._batcher.count(job)

    def stop(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def stats_dict(self) -> dict:
        with self._cond:
            clocks, self._pending_clocks = self._pending_clocks, []
        busy = sum(c.total_s for c in clocks)  # waits for those batches' last CUDA events
        with self._cond:
            self.stats.busy_s += busy
            return self.stats.as_dict()

    # ------------------------------------------------------------------ device thread
    def _run(self) -> None:
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device.index)  # events and allocations on the run device
        with torch.inference_mode():
            while True:
                work = self._next()
                if work is None:
                    return
                kind, item = work
                if kind == "expired":
                    self._expire(item)
                elif kind == "call":
                    self._run_call(*item)
                else:
                    self._run_requests(item)

    def _next(self):
        """Block until there is something to do; None once closed (everything left is failed)."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self.closed:
                    self._fail_everything_left()
                    return None
                expired = self._batcher.pop_expired(now)
                if expired:
                    self._cond.notify_all()
                    return "expired", expired
                if self._calls:
                    return "call", self._calls.popleft()
                batch = self._batcher.next_batch(now)
                if batch:
                    self._cond.notify_all()  # room in the queue for blocked submitters
                    return "batch", batch
                self._cond.wait(self._batcher.wait_s(now))

    def _fail_everything_left(self) -> None:  # under the lock
        closed = EngineError("engine core: closed before this work ran")
        for _, future in self._calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(closed)
        self._calls.clear()
        for request in self._batcher.drain():
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(closed)

    def _expire(self, requests: list[Request]) -> None:
        now = time.monotonic()
        for r in requests:
            if r.future.set_running_or_notify_cancel():
                late = now - r.deadline
                r.future.set_exception(DeadlineExceededError(
                    f"chunk frames {r.work.frame_range[0]}..{r.work.frame_range[1] - 1}: expected to start before "
                    f"its deadline, found it {late * 1000:.0f} ms late while queued; dropped without device work"))
        self._count(expired_requests=len(requests))

    def _run_call(self, fn: Callable, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        t0 = time.perf_counter()
        _resolve(future, fn, oom=self._release_memory)
        self._count(calls=1, busy_s=time.perf_counter() - t0)
        trim_heap()  # this thread's arena keeps the freed blocks of varying-size calls (live whisper windows)

    def _run_requests(self, requests: list[Request]) -> None:
        live = [r for r in requests if r.future.set_running_or_notify_cancel()]
        if live:
            self._run_batch(live)

    def _run_batch(self, requests: list[Request]) -> None:
        """Run `requests` (already marked running) and resolve each future; never raises."""
        states = _generator_states(requests)
        clock = StageClock(self.device, profile=self.policy.profile)
        log.debug("running a batch of %d chunk(s)", len(requests))
        try:
            results = run_batch(self.runners, [r.work for r in requests], clock,
                                max_vae_rows=self.policy.max_vae_rows, fp32_decoder=self._fp32_decoder,
                                should_stop=lambda: all(self._was_cancelled(r) for r in requests))
        except ChunkCancelled as exc:  # every job of the batch was cancelled: stopped between steps
            log.info("batch of %d chunk(s) stopped: %s", len(requests), exc)
            self._fail(requests, exc)
            return
        except OOM_ERRORS as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            results = None
        except BaseException as exc:  # a failing batch fails its requests, never the device thread
            log.warning("batch of %d chunk(s) failed: %s: %s", len(requests), type(exc).__name__, exc)
            self._fail(requests, exc)
            return
        if results is None:  # out of memory: handled outside the except block so the tensors can be freed
            self._out_of_memory(requests, states, message)
            return
        total = sum(r.work.frames for r in requests)
        failed = sum(isinstance(result, BaseException) for result in results)
        self._count(batches=1, requests=len(requests) - failed, failed_requests=failed, batch_size=len(requests))
        self._account(clock)
        for request, result in zip(requests, results):
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(ChunkOutput(result, clock, request.work.frames / total, len(requests)))

    def _out_of_memory(self, requests: list[Request], states, message: str) -> None:
        self._count(oom_events=1)
        self._release_memory()
        if self.policy.oom_retry and len(requests) > 1:
            log.warning("out of memory on a batch of %d chunks (%s); retrying in halves", len(requests), message)
            _restore_generators(states)
            half = len(requests) // 2
            for part in (requests[:half], requests[half:]):
                self._run_batch(part)
            return
        frames = ", ".join(f"{r.work.frame_range[0]}..{r.work.frame_range[1] - 1}" for r in requests)
        self._fail(requests, GpuOutOfMemoryError(
            f"device {self.device}: expected a batch of {len(requests)} chunk(s) (frames {frames}) to fit in "
            f"memory, found out of memory ({message}); cached memory was released and the engine keeps serving"))

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _fail(self, requests: list[Request], exc: BaseException) -> None:
        self._count(failed_requests=len(requests))
        for request in requests:
            request.future.set_exception(exc)

    def _account(self, clock: StageClock) -> None:
        if self.device.type == "cuda" and not self.policy.profile:
            with self._cond:  # resolved later (stats_dict), so timing never waits for the device here
                self._pending_clocks.append(clock)
                overflow = _take_oldest(self._pending_clocks, PENDING_CLOCKS_MAX)
            if overflow:  # resolved, not dropped: idle time must not be over-reported under load
                self._count(busy_s=sum(c.total_s for c in overflow))
        else:
            self._count(busy_s=clock.total_s)

    def _count(self, *, batch_size: int | None = None, **increments) -> None:
        """Add to the counters (under the lock: `stats_dict` reads them from other threads)."""
        with self._cond:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
            if batch_size is not None:
                sizes = self.stats.batch_sizes
                sizes[batch_size] = sizes.get(batch_size, 0) + 1

    def _fp32_decoder(self):
        if self._fp32 is None and self._fp32_factory is not None:
            self._fp32 = self._fp32_factory()
        return self._fp32


PENDING_CLOCKS_MAX = 256  # CUDA clocks kept unread; beyond it the oldest half is resolved on the device thread


def _take_oldest(pending: list, limit: int) -> list:
    """Remove and return the oldest half of `pending` once it exceeds `limit` (else nothing). Those batches were
    queued `limit / 2` batches ago, so their CUDA events have long completed: reading them does not wait."""
    if len(pending) <= limit:
        return []
    oldest = pending[: limit // 2]
    del pending[: limit // 2]
    return oldest


def _resolve(future: Future, fn: Callable, oom: Callable[[], None] | None = None) -> None:
    try:
        future.set_result(fn())
    except OOM_ERRORS as exc:
        future.set_exception(GpuOutOfMemoryError(f"device call: expected it to fit in memory, found {exc}"))
        if oom is not None:
            oom()
    except BaseException as exc:
        future.set_exception(exc)


def _generator_states(requests: list[Request]) -> list[tuple[torch.Generator, torch.Tensor]]:
    """Each distinct generator's state before the batch (restored when a batch is retried)."""
    seen: dict[int, tuple[torch.Generator, torch.Tensor]] = {}
    for r in requests:
        g = r.work.generator
        seen.setdefault(id(g), (g, g.get_state()))
    return list(seen.values())


def _restore_generators(states) -> None:
    for generator, state in states:
        generator.set_state(state)
