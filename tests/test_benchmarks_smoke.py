"""The benchmark scripts still run: each main() on the smallest setting, with a micro random model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ONE_CHUNK_SECONDS = 0.56  # 8960 samples -> 28 whisper features -> 16 output frames: exactly one chunk


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings (bench_utils, random_models)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from random_models import write_micro_model

        return write_micro_model(tmp_path_factory.mktemp("micro") / "model")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.slow
def test_pipeline_benchmark_writes_stage_table(media, micro_model, tmp_path, monkeypatch):
    bench = _load("pipeline", monkeypatch)
    out = tmp_path / "pipeline.json"
    report = bench.main([
        "--model", str(micro_model), "--resolutions", "256", "--seconds", str(ONE_CHUNK_SECONDS),
        "--size", "540", "960", "--steps", "1", "--guidance", "1.0", "--deepcache", "0", "--device", "cpu",
        "--out", str(out),
    ])
    assert json.loads(out.read_text()) == report
    assert out.with_suffix(".png").stat().st_size > 0
    (row,) = report["rows"]
    assert row["frames"] == 16 and row["resolution"] == 256
    stages = row["stage_s"]
    for stage in ("decode", "face", "vae_encode", "unet", "vae_decode", "restore", "encode"):
        assert stages[stage] > 0, stage
    assert sum(stages.values()) == pytest.approx(row["wall_s"], rel=0.01, abs=0.01)
    assert len(report["machine"]["loadavg_1_5_15"]) == 3


@pytest.mark.slow
def test_memory_benchmark_measures_each_length_in_a_child(media, micro_model, tmp_path, monkeypatch):
    bench = _load("memory", monkeypatch)
    out = tmp_path / "memory.json"
    report = bench.main([
        "--model", str(micro_model), "--lengths", "0.64", "1.28", "--base-seconds", "0.64",
        "--faces", "first-chunk", "--out", str(out),
    ])
    assert out.with_suffix(".png").stat().st_size > 0
    rows = report["rows"]
    assert [r["input_seconds"] for r in rows] == [0.64, 1.28]
    assert [r["frames"] for r in rows] == [18, 34]  # official count: 25 per second + 2
    # faces only on source frames 0..15; the ping-pong tail revisits sources 15, 14 (0.64 s) or 31, 30 (1.28 s)
    assert [r["no_face_frames"] for r in rows] == [0, 18]
    for r in rows:
        assert r["peak_rss_hwm_mib"] >= r["rss_after_load_mib"] > r["rss_start_mib"] > 0
        assert r["rss_timeline"] and r["peak_rss_hwm_mib"] >= r["rss_end_mib"] > 0


def test_memory_report_helpers_tile_faces_and_fit_the_peak_slope(tmp_path, monkeypatch):
    import numpy as np

    bench = _load("memory", monkeypatch)
    base = np.arange(3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2)
    tiled = bench.tiled_landmarks(base, 7, "all", chunk=4)
    assert np.array_equal(tiled[[0, 3, 6]], base[[0, 0, 0]]) and np.array_equal(tiled[5], base[2])
    first = bench.tiled_landmarks(base, 7, "first-chunk", chunk=4)
    assert np.isnan(first[4:]).all() and np.array_equal(first[:4], tiled[:4])

    def row(seconds: float, peak: float) -> dict:
        return {"input_seconds": seconds, "frames": int(25 * seconds) + 2, "no_face_frames": 0, "wall_s": 1.0,
                "frames_per_s": 1.0, "rss_after_load_mib": 100.0, "peak_rss_hwm_mib": peak,
                "rss_end_mib": 150.0,
                "rss_timeline": [(0.0, 100.0), (1.0, peak)]}

    args = bench.parse_args(["--out", str(tmp_path / "m.json")])
    report = bench.publish(bench.summarise([row(1, 200.0), row(2, 203.0), row(4, 209.0)], args), args.out,
                           bench.plot, bench.table)
    assert report["peak_slope_mib_per_input_s"] == pytest.approx(3.0)
    assert report["end_rss_slope_mib_per_input_s"] == pytest.approx(0.0, abs=1e-9)
    assert report["hold_all_frames_slope_mib_per_input_s"] == pytest.approx(25 * 540 * 960 * 3 / 2**20, abs=0.01)
    assert json.loads(args.out.read_text())["rows"][2]["peak_rss_hwm_mib"] == 209.0
    assert args.out.with_suffix(".png").stat().st_size > 0
