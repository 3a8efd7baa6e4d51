"""pytest plugin for benchmarks/gpu_check.py: one JSON line per finished test, so a timeout keeps the results so far.

Each line is written with one append as soon as the test's outcome is known; a test file that fails to import
(a collection error) is a row too, so it cannot vanish from the results.
"""

from __future__ import annotations

import json
import os


def _write(row: dict) -> None:
    """Append to $GPU_CHECK_TESTS_JSONL (gpu_check's result rows) as a row of step $GPU_CHECK_TESTS_STEP."""
    path = os.environ.get("GPU_CHECK_TESTS_JSONL")
    if not path:
        return
    line = json.dumps({"step": os.environ.get("GPU_CHECK_TESTS_STEP", "tests"), "kind": "test", **row}) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest.TestReport
    if report.when == "call" or (report.when in ("setup", "teardown") and (report.skipped or report.failed)):
        outcome = "error" if report.when != "call" and report.failed else report.outcome
        message = None
        if report.skipped and isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        elif report.failed:
            message = str(report.longrepr)[-2000:]
        _write({"test": report.nodeid, "outcome": outcome, "when": report.when, "seconds": round(report.duration, 2),
                "message": message})


def pytest_collectreport(report) -> None:  # noqa: ANN001 - pytest.CollectReport
    if report.failed:
        _write({"test": report.nodeid, "outcome": "error", "when": "collect", "seconds": 0.0,
                "message": str(report.longrepr)[-2000:]})
