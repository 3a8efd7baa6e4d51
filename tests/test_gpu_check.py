"""benchmarks/gpu_check.py's plumbing on a CPU: every step in order, the JSON schema, files that fit a device call.

The GPU numbers themselves come from a lent H100/H200 (see README "Measuring on a GPU"); here `--quick` runs each
step once on tiny models so the script is known to work before a GPU machine's short lease starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
STEPS = ["tests", "unet", "vae", "pipeline", "streaming"]
STATUSES = {"ok", "failed", "timeout", "skipped"}


def _check_report(out: Path, steps: list[str]) -> dict:
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["benchmark"] == "gpu_check" and report["format"] == 1 and report["quick"] is True
    assert {"torch", "load_average", "cpu_count", "gpu"} <= set(report["machine"])
    assert [s["name"] for s in report["steps"]] == steps  # the order a timeout relies on
    for step in report["steps"]:
        assert step["status"] in STATUSES and step["budget_s"] > 0 and step["seconds"] is not None, step
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files  # device call limits
    assert all((out / f).is_file() for f in files)  # one folder: nothing deeper than $OUT/file
    assert "| step | status |" in (out / "gpu_check.md").read_text()
    return report


def test_quick_run_measures_every_step_in_order(tmp_path):
    """Every step once (in one process, about 40 s of CPU): one real call of each measurement, not a stand-in."""
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--in-process", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _check_report(out, STEPS)
    assert [s["status"] for s in report["steps"]] == ["ok"] * 5, report["steps"]
    results = report["results"]
    tests = [r for r in results["tests"]["rows"] if r["kind"] == "test"]
    assert tests and all(r["outcome"] in ("passed", "skipped") for r in tests)  # skipped here: no GPU
    (summary,) = [r for r in results["tests"]["rows"] if r["kind"] == "summary"]
    assert summary["counts"] and summary["returncode"] == 0
    unet = [r for r in results["unet"]["rows"] if r.get("kind") == "unet" and "ms_median" in r]
    assert {r["pass"] for r in unet} == {"full", "shallow"}
    assert all(r["ms_median"] > 0 and r["finite"] and r["tflops_achieved"] >= 0 for r in unet)
    assert any(r.get("kind") == "flops" and r["tflop_full"] >= 0 for r in results["unet"]["rows"])
    assert all("skipped" in r for r in results["unet"]["rows"] if r.get("mode") not in (None, "eager"))
    vae = results["vae"]["rows"]
    assert {r["op"] for r in vae} == {"encode", "decode"} and all(r["ms_per_frame"] > 0 for r in vae)
    pipeline = [r for r in results["pipeline"]["rows"] if "frames_per_s" in r]
    assert {r["variant"] for r in pipeline} == {"eager-serial", "optimized"}
    for row in pipeline:
        assert row["frames"] == 5 and row["frames_per_s"] > 0  # the quick 0.2 s of speech (7 at the official length)
        assert sum(row["stage_share"].values()) == pytest.approx(1.0, abs=0.01) and row["stage_share"]["unet"] > 0
    stream = [r for r in results["streaming"]["rows"] if r["kind"] == "stream"]
    assert stream and stream[0]["frames"] == 5 and stream[0]["first_frame_latency_s"] > 0
    (throughput,) = [r for r in results["streaming"]["rows"] if r["kind"] == "throughput"]
    assert "result" in throughput or "skipped" in throughput or "error" in throughput
    assert {"unet.png", "vae.png", "pipeline.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_each_step_runs_in_its_own_process_with_a_budget(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--steps", "vae", "unet",
                           "--budget-scale", "0.001", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = _check_report(out, ["unet", "vae"])  # the script's order, not the command line's
    rows = report["results"]["vae"]["rows"]
    assert rows and all("skipped" in r and r["skipped"].startswith("budget") for r in rows)  # no time: cases say so
    assert report["steps"][1]["status"] == "skipped"


def test_cpu_without_quick_and_cuda_without_a_gpu_are_refused(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--device cpu needs --quick" in done.stderr
    import torch

    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gpu")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 7 and "expected a CUDA GPU" in done.stderr
        assert not (tmp_path / "gpu").exists()  # nothing written before the check
