"""Offline jobs on the engine core: admission, a prepare and a finish thread per job, and the handle.

A job is two stages that talk through a bounded queue of `PendingChunk`s: `prepare` (decode, faces,
alignment, masks, audio windows; it queues each chunk's device work as it goes) and `finish`
(restore and write, in order). At most `max_active_jobs` run at once; up to `max_queued_jobs` more
wait for a slot, and one more is refused with QueueFullError at once. A queued job whose deadline
has passed when its turn comes fails with DeadlineExceededError without any work. Cancelling drops
the job's queued device work at once and stops both stages within one chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent import futures
from concurrent.futures import CancelledError, Future
from typing import Protocol

from engine.errors import DeadlineExceededError, EngineError, QueueFullError
from engine.runtime.policy import EnginePolicy

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a stage blocked on the other one re-checks for cancellation


class JobStages(Protocol):
    """What a front end gives the runner for one job."""

    def prepare(self, cancelled: Callable[[], bool]) -> Iterator:  # yields PendingChunk, device work queued
        ...

    def finish(self, chunks: Iterator, cancelled: Callable[[], bool]) -> object:  # in order; the job's result
        ...

    def close(self) -> None:  # release what the job holds (detectors, files); called once, at the end
        ...


class JobHandle:
    """The caller's view of one submitted job."""

    def __init__(self, runner: "JobRunner", stages: JobStages, deadline: float | None, key: Hashable) -> None:
        self._runner, self.stages, self.deadline = runner, stages, deadline
        self._future: Future = Future()
        self._stop = threading.Event()  # set by cancel() and when the job ends: both stages stop
        self._cancelled = False
        self.key = key  # the job's key in the engine core's queue (its chunks are submitted under it)
        self.submitted = time.monotonic()

    def result(self, timeout: float | None = None):
        """The job's result; raises its typed error, CancelledError, or TimeoutError after `timeout` s."""
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None):
        return self._future.exception(timeout)

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (its output written or cleaned up); True when it has."""
        return not futures.wait([self._future], timeout).not_done

    def cancel(self) -> bool:
        """Stop the job: queued device work is dropped now, running stages stop within one chunk."""
        if self._future.done():
            return False
        self._cancelled = True
        self._stop.set()
        self._runner._cancel(self)
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


class JobRunner:
    def __init__(self, engine, policy: EnginePolicy) -> None:
        self.engine, self.policy = engine, policy
        self._lock = threading.Lock()
        self._waiting: deque[JobHandle] = deque()
        self._active: dict[JobHandle, list[threading.Thread]] = {}
        self._closed = False

    def submit(self, stages: JobStages, *, key: Hashable, deadline: float | None = None) -> JobHandle:
        """Start `stages` now, or queue them; `key` is what the job's chunks are submitted under."""
        handle = JobHandle(self, stages, deadline, key)
        with self._lock:
            if self._closed:
                raise EngineError("job runner: expected an open engine, found it closed")
            if len(self._active) < self.policy.max_active_jobs:
                self._start(handle)
            elif len(self._waiting) < self.policy.max_queued_jobs:
                self._waiting.append(handle)
            else:
                raise QueueFullError(f"job queue: expected fewer than {self.policy.max_queued_jobs} jobs waiting, "
                                     f"found {len(self._waiting)}; retry later or raise EnginePolicy.max_queued_jobs")
        return handle

    @property
    def active_jobs(self) -> int:
        with self._lock:
            return len(self._active)

    def close(self) -> None:
        """Cancel every job and join every stage thread."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            active = list(self._active)
        for handle in waiting:
            handle._cancelled = True
            handle._stop.set()
            _fail(handle, CancelledError())
            handle.stages.close()
        for handle in active:
            handle.cancel()
        while True:
            with self._lock:
                threads = [t for ts in self._active.values() for t in ts]
            if not threads:
                return
            for thread in threads:
                thread.join()

    # ------------------------------------------------------------------ internals
    def _start(self, handle: JobHandle) -> None:  # under the lock
        chunks: queue.Queue = queue.Queue(maxsize=self.policy.prefetch_chunks)
        threads = [threading.Thread(target=self._prepare, args=(handle, chunks), name="lipsync-prepare", daemon=True),
                   threading.Thread(target=self._finish, args=(handle, chunks), name="lipsync-finish", daemon=True)]
        self._active[handle] = threads
        for thread in threads:
            thread.start()

    def _cancel(self, handle: JobHandle) -> None:
        with self._lock:
            waiting = handle in self._waiting
            if waiting:
                self._waiting.remove(handle)
        if waiting:
            _fail(handle, CancelledError())
            handle.stages.close()
            return
        self.engine.cancel_job(handle.key)

    def _prepare(self, handle: JobHandle, chunks: queue.Queue) -> None:
        produced = None
        try:
            produced = handle.stages.prepare(lambda: handle.stopping)
            for chunk in produced:
                if not _put(chunks, chunk, handle):
                    chunk.cancel()
                    break
            else:
                _put(chunks, _END, handle)
        except BaseException as exc:  # handed to the finish stage, which fails the handle with it
            _put(chunks, _Failed(exc), handle)
        finally:
            if produced is not None:
                produced.close()  # the generator's own cleanup (cursor, decoder) runs here, in this thread

    def _finish(self, handle: JobHandle, chunks: queue.Queue) -> None:
        try:
            result = handle.stages.finish(_drain(chunks, handle), lambda: handle.stopping)
            if not handle._future.done():
                handle._future.set_result(result)
        except BaseException as exc:
            _fail(handle, exc)
        finally:
            handle._stop.set()  # stops the prepare stage if it is still running
            self.engine.cancel_job(handle.key)
            with self._lock:
                threads = self._active.get(handle, [])
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
            handle.stages.close()
            self._done(handle)

    def _done(self, handle: JobHandle) -> None:
        expired = []
        with self._lock:
            self._active.pop(handle, None)
            while self._waiting and len(self._active) < self.policy.max_active_jobs and not self._closed:
                nxt = self._waiting.popleft()
                if nxt.deadline is not None and time.monotonic() > nxt.deadline:
                    expired.append(nxt)
                    continue
                self._start(nxt)
        for nxt in expired:
            late = time.monotonic() - nxt.deadline
            _fail(nxt, DeadlineExceededError(f"job: expected to start before its deadline, found it {late:.2f} s "
                                             "late while queued; dropped without work"))
            nxt.stages.close()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def _put(chunks: queue.Queue, item, handle: JobHandle) -> bool:
    """Put `item`, waiting while the finish stage is behind; False once the job is cancelled."""
    while not handle.stopping:
        try:
            chunks.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _drain(chunks: queue.Queue, handle: JobHandle) -> Iterator:
    """The prepared chunks in order until the end; raises the prepare stage's error or CancelledError."""
    while True:
        if handle.stopping:
            raise CancelledError()
        try:
            item = chunks.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if item is _END:
            return
        if isinstance(item, _Failed):
            raise item.exc
        yield item


def _fail(handle: JobHandle, exc: BaseException) -> None:
    if not handle._future.done():
        handle._future.set_exception(exc)
