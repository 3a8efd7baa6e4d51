"""Progress over a batch: one bar over jobs and one over frames (a TTY only), one log line per finished job."""

from __future__ import annotations

import logging
import sys
import threading

from engine.cluster.manifest import BatchJob
from engine.cluster.outcome import FAILED, JobOutcome

log = logging.getLogger("engine.batch")


class BatchProgress:
    """Thread-safe: frame updates may come from engine-core threads or from remote workers' reports."""

    def __init__(self, jobs: list[BatchJob], *, enabled: bool | None = None) -> None:
        self._lock = threading.Lock()
        self._frames: dict[int, tuple[int, int]] = {j.line: (0, j.frames_estimate or 0) for j in jobs}
        self._bars = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled and jobs:
            from tqdm import tqdm

            self._bars = (tqdm(total=len(jobs), unit="job", desc="jobs  ", position=0, file=sys.stderr),
                          tqdm(total=self._total(), unit="frame", desc="frames", position=1, file=sys.stderr))

    def _total(self) -> int:
        return sum(total for _, total in self._frames.values())

    def frames(self, line: int, done: int, total: int) -> None:
        with self._lock:
            self._frames[line] = (done, total)
            self._refresh()

    def finished(self, outcome: JobOutcome) -> None:
        with self._lock:
            done, total = self._frames.get(outcome.line, (0, 0))
            if outcome.status == FAILED:  # its frames will never come: drop them from the total
                self._frames[outcome.line] = (done, done)
            else:
                self._frames[outcome.line] = (outcome.frames, outcome.frames)
            message = (f"line {outcome.line} ({outcome.id}) {outcome.status}: "
                       + (f"{outcome.error}: {outcome.reason}" if outcome.status == FAILED else outcome.output))
            if self._bars is not None:
                self._bars[0].update(1)
                self._refresh()
                self._bars[0].write(message, file=sys.stderr)
            else:
                log.info("%s", message)

    def retrying(self, line: int, why: str) -> None:
        with self._lock:
            self._frames[line] = (0, self._frames.get(line, (0, 0))[1])
            message = f"line {line}: {why}; retrying"
            if self._bars is not None:
                self._refresh()
                self._bars[0].write(message, file=sys.stderr)
            else:
                log.warning("%s", message)

    def _refresh(self) -> None:
        if self._bars is None:
            return
        bar = self._bars[1]
        bar.total = self._total()
        bar.update(sum(done for done, _ in self._frames.values()) - bar.n)

    def close(self) -> None:
        if self._bars is not None:
            for bar in self._bars:
                bar.close()
            self._bars = None
