"""Which queued chunk requests run next, and together: pure bookkeeping, no threads and no tensors.

Requests are queued per job, in submission order; only a job's oldest requests are eligible (a job's
chunks draw from one generator, so they must run in order). A batch is led by the first job in the
round-robin line that has work; it takes requests of the leader's shape class, one per job per pass
(several per job only with `same_job_batching`), up to `max_batch`. Every job served goes to the back
of the line. A batch is ready when full or when its oldest request has waited `max_wait_s`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable

from engine.errors import QueueFullError
from engine.runtime.requests import Request


class Batcher:
    def __init__(self, *, max_batch: int, max_wait_s: float, capacity: int, same_job_batching: bool = False,
                 max_rows: int | None = None):
        self.max_batch, self.max_wait_s, self.capacity = max_batch, max_wait_s, capacity
        self.max_rows = max_rows  # U-Net rows per batch (CFG: 2 per request)
        self.same_job_batching = same_job_batching
        self._jobs: OrderedDict[Hashable, deque[Request]] = OrderedDict()  # the round-robin line
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def count(self, job: Hashable) -> int:
        """Requests of `job` waiting."""
        return len(self._jobs.get(job, ()))

    @property
    def full(self) -> bool:
        return self._size >= self.capacity

    def add(self, request: Request) -> None:
        """Queue `request`, or raise QueueFullError at once when `capacity` requests are waiting."""
        if self.full:
            raise QueueFullError(f"engine queue: expected fewer than {self.capacity} chunks waiting, found "
                                 f"{self._size}; retry later or raise EnginePolicy.max_queued_chunks")
        self._jobs.setdefault(request.job, deque()).append(request)
        self._size += 1

    def remove_job(self, job: Hashable) -> list[Request]:
        """Take every queued request of `job` out (cancellation); returns them."""
        removed = list(self._jobs.pop(job, ()))
        self._size -= len(removed)
        return removed

    def drain(self) -> list[Request]:
        """Take every queued request out (shutdown)."""
        removed = [r for queue in self._jobs.values() for r in queue]
        self._jobs.clear()
        self._size = 0
        return removed

    def pop_expired(self, now: float) -> list[Request]:
        """Take out the requests whose deadline has passed (they must fail without device work)."""
        expired = []
        for job in list(self._jobs):
            queue = self._jobs[job]
            kept = deque(r for r in queue if not r.expired(now))
            if len(kept) != len(queue):
                expired.extend(r for r in queue if r.expired(now))
                self._replace(job, kept)
        self._size -= len(expired)
        return expired

    def next_batch(self, now: float) -> list[Request]:
        """The next ready batch, taken out of the queue (empty when nothing is ready yet)."""
        for leader in self._jobs:
            batch = self._gather(leader)
            if len(batch) >= self._limit(batch[0].shape) or now - min(r.enqueued for r in batch) >= self.max_wait_s:
                self._take(batch)
                return batch
        return []

    def wait_s(self, now: float) -> float | None:
        """Seconds until a partial batch becomes ready (None when nothing is queued)."""
        if not self._jobs:
            return None
        oldest = min(q[0].enqueued for q in self._jobs.values())
        return max(0.0, oldest + self.max_wait_s - now)

    def _limit(self, shape) -> int:
        """Requests of `shape` per batch: max_batch, and no more U-Net rows than max_rows (at least one)."""
        if self.max_rows is None:
            return self.max_batch
        return max(1, min(self.max_batch, self.max_rows // shape.unet_rows))

    def _gather(self, leader: Hashable) -> list[Request]:
        shape = self._jobs[leader][0].shape
        limit = self._limit(shape)
        taken = {job: 0 for job in self._jobs}
        batch: list[Request] = []
        line = [leader] + [job for job in self._jobs if job != leader]
        progress = True
        while progress and len(batch) < limit:
            progress = False
            for job in line:
                queue, k = self._jobs[job], taken[job]
                if len(batch) >= limit or k >= len(queue) or queue[k].shape != shape:
                    continue
                if k > 0 and not self.same_job_batching:
                    continue
                batch.append(queue[k])
                taken[job] = k + 1
                progress = True
        return batch

    def _take(self, batch: list[Request]) -> None:
        served = list(dict.fromkeys(r.job for r in batch))
        for job in served:
            queue = self._jobs[job]
            count = sum(1 for r in batch if r.job == job)
            for _ in range(count):
                queue.popleft()
            if queue:
                self._jobs.move_to_end(job)  # served: to the back of the line
            else:
                del self._jobs[job]
        self._size -= len(batch)

    def _replace(self, job: Hashable, queue: deque[Request]) -> None:
        if queue:
            self._jobs[job] = queue
        else:
            del self._jobs[job]
