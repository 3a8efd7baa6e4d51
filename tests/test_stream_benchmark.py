"""benchmarks/streaming.py still runs and writes its JSON (smallest settings), concurrent sessions included."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "streaming.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("bench_streaming", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_streaming_benchmark_latency_and_avatar_parts(media, golden, tmp_path):
    out = tmp_path / "streaming.json"
    assert _benchmark().main([
        "--parts", "latency", "sessions", "avatar", "--first-chunk-only", "--chunks", "8", "--lookaheads", "0",
        "--no-avatar-runs", "--seconds", "0.6", "--guidance", "1.0", "--avatar-frames", "2", "--avatar-crfs",
        "--session-counts", "2", "--session-seconds", "0.4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["avatar"] for r in result["latency"]] == [False]
    assert all(r["first_frame_latency_s"] and r["latency_floor_s"] == pytest.approx(11 / 25)
               for r in result["latency"])
    (sessions,) = result["sessions"]  # two live sessions at once on one engine core
    assert sessions["sessions"] == 2 and len(sessions["per_session"]) == 2
    assert all(r["frames"] == 10 and r["first_frame_latency_s"] > 0 and r["steady_frame_interval_ms"] is not None
               for r in sessions["per_session"])  # 0.4 s of speech: 10 frames, chunks of 8 + 2
    assert sum(int(k) * v for k, v in sessions["batch_sizes"].items()) == 4  # every chunk ran, batched or not
    for row in result["avatar"]:
        assert row["frames"] == 2 and row["frames_equal_to_source"]
        assert row["ratio_old_to_new"] > 1 and row["mb_per_minute"] < row["old_raw_format_mb_per_minute"]
    assert result["command"].startswith("python benchmarks/streaming.py --parts latency sessions avatar")
