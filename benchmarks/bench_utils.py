"""Shared benchmark plumbing: machine description, memory readings and matplotlib setup, so results compare."""

from __future__ import annotations

import json
import os
import platform
import resource
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_MEDIA = REPO.parent / "shared" / "media"
KIB_PER_MIB = 1024


def machine_info(note: str = "") -> dict:
    """Platform, CPU and GPU, torch threads and the load average (the CPU box is shared: numbers are noisy)."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "note": note,
    }


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM, ...) in MiB; NaN where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return float("nan")


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (getrusage; kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


class RssSampler:
    """Background thread that samples VmRSS every `interval_s`; `.samples` is [(seconds, MiB)]."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, status_mib("VmRSS")))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max((mib for _, mib in self.samples), default=float("nan"))

    def thinned(self, max_points: int = 300) -> list[tuple[float, float]]:
        step = max(1, len(self.samples) // max_points)
        return [(round(t, 2), round(m, 1)) for t, m in self.samples[::step]]


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def publish(report: dict, out: Path, plot, table, rows_key: str = "rows") -> dict:
    """Write `report` as JSON to `out`, `plot(rows, out.png)`, print the markdown `table(rows)`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(report[rows_key], out.with_suffix(".png"))
    print(table(report[rows_key]))
    return report
