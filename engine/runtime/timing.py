"""Stage times on the device thread without serialising the device: CUDA events, or wall time on a CPU."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


STAGE_LABEL_PREFIX = "stage:"  # record_function label of each device stage


class StageClock:
    """Marks the stages of one batch. On CUDA it records event pairs and resolves them only when asked
    (after the results were used anyway), so timing never adds a `torch.cuda.synchronize()`;
    `profile=True` synchronises around each stage instead (exact, slower)."""

    def __init__(self, device: torch.device, *, profile: bool = False) -> None:
        self._events = device.type == "cuda" and not profile
        self._sync = device.type == "cuda" and profile
        self._marks: list[tuple[str, object, object]] = []
        self._seconds: dict[str, float] | None = None

    @contextmanager
    def stage(self, name: str):
        # the label names the stage in a torch.profiler trace (gpu_check's profile step); costs ~µs otherwise
        with torch.profiler.record_function(f"{STAGE_LABEL_PREFIX}{name}"):
            if self._events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                yield
                end.record()
            else:
                if self._sync:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                yield
                if self._sync:
                    torch.cuda.synchronize()
                end = time.perf_counter()
        self._marks.append((name, start, end))

    def seconds(self) -> dict[str, float]:
        """Seconds per stage (waits for the last CUDA event once; cached)."""
        if self._seconds is None:
            totals: dict[str, float] = {}
            if self._events and self._marks:
                self._marks[-1][2].synchronize()
            for name, start, end in self._marks:
                spent = start.elapsed_time(end) / 1000.0 if self._events else end - start
                totals[name] = totals.get(name, 0.0) + spent
            self._seconds = totals
        return self._seconds

    @property
    def total_s(self) -> float:
        return sum(self.seconds().values())
