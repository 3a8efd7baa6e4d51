"""pytest plugin for benchmarks/gpu_check.py: one JSON line per finished test, so a timeout keeps the results so far."""

from __future__ import annotations

import json
import os


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest.TestReport
    path = os.environ.get("GPU_CHECK_TESTS_JSONL")
    if not path:
        return
    if report.when == "call" or (report.when == "setup" and (report.skipped or report.failed)):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        message = None
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.failed:
            message = str(report.longrepr)[-2000:]
        row = {"test": report.nodeid, "outcome": outcome, "seconds": round(report.duration, 2), "message": message}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
