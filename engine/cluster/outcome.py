"""What happened to each job and to the batch: the end-of-run summary and the JSON report."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class JobOutcome:
    """One job's end state. `history` lists earlier attempts that a dying worker cut short."""

    line: int
    id: str
    output: str
    status: str  # done | skipped | failed
    reason: str = ""
    error: str | None = None  # engine.errors class name (or the unexpected exception's class)
    exit_code: int | None = None  # that error's exit code
    attempts: int = 0
    worker: str | None = None
    frames: int = 0
    seconds: float = 0.0
    history: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "JobOutcome":
        return cls(**data)


@dataclass
class BatchReport:
    """Every job's outcome plus the batch's timing; `startup_seconds` is cluster start + model loading."""

    manifest: str
    runner: str  # "local" or "ray <address>"
    workers: int
    outcomes: list[JobOutcome]
    wall_seconds: float
    startup_seconds: float
    options: dict
    started_at: float = field(default_factory=time.time)
    peak_rss_mib: dict = field(default_factory=dict)  # {"self", "children"}: engine.runtime.heap.peak_rss_mib()

    def counts(self) -> dict[str, int]:
        counts = Counter(o.status for o in self.outcomes)
        return {status: counts.get(status, 0) for status in (DONE, SKIPPED, FAILED)}

    @property
    def frames(self) -> int:
        return sum(o.frames for o in self.outcomes if o.status == DONE)

    @property
    def ok(self) -> bool:
        return not any(o.status == FAILED for o in self.outcomes)

    def throughput(self) -> dict[str, float]:
        done = self.counts()[DONE]
        wall = self.wall_seconds
        return {"jobs_per_hour": round(3600 * done / wall, 3) if wall > 0 else 0.0,
                "frames_per_second": round(self.frames / wall, 4) if wall > 0 else 0.0}

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "runner": self.runner, "workers": self.workers, "counts": self.counts(),
                "frames": self.frames, "wall_seconds": round(self.wall_seconds, 3),
                "startup_seconds": round(self.startup_seconds, 3), **self.throughput(), "options": self.options,
                "started_at": self.started_at, "peak_rss_mib": self.peak_rss_mib,
                "jobs": [o.to_json() for o in self.outcomes]}

    def summary(self) -> str:
        from engine.runtime.heap import describe_peak_rss

        c = self.counts()
        t = self.throughput()
        lines = [f"batch: {c[DONE]} done, {c[SKIPPED]} skipped, {c[FAILED]} failed of {len(self.outcomes)} jobs "
                 f"in {self.wall_seconds:.1f} s ({self.startup_seconds:.1f} s start-up) on {self.workers} "
                 f"worker(s), {self.runner} | {self.frames} frames, {t['frames_per_second']:.2f} frames/s, "
                 f"{t['jobs_per_hour']:.1f} jobs/hour"
                 + (f" | {describe_peak_rss(self.peak_rss_mib)} in this process" if self.peak_rss_mib else "")]
        for o in self.outcomes:
            if o.status == FAILED:
                lines.append(f"  failed  line {o.line} ({o.id}) -> {o.output}: {o.error or 'error'}: {o.reason}")
        return "\n".join(lines)
