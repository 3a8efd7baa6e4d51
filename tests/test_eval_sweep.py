"""`engine eval --sweep`: settings text, the frontier, bad inputs refused before any run, and the sweep end to end
on a real clip (random weights: the plumbing and the arithmetic are under test, not the scores)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from engine.errors import InvalidInputError, NoFaceError

SPEECH_SAMPLES = 12_800  # 0.8 s of demo1 speech -> 22 output frames (two chunks; StableSyncNet needs 16)
BASELINE = "steps=1+guidance=1.0"
OTHER = "steps=1+guidance=1.0+seed=5"  # another noise draw: as cheap as the baseline, different frames


@pytest.fixture(scope="module")
def mediapipe():
    from engine.errors import BackendUnavailableError, CheckpointError
    from engine.face.detection.mediapipe import MediapipeFaceSource

    try:
        MediapipeFaceSource()
    except (BackendUnavailableError, CheckpointError, OSError) as exc:
        pytest.skip(f"offline face models unavailable: {exc}")


@pytest.fixture(scope="module")
def clip(media, tmp_path_factory):
    """demo1 cut to 1 s at 540x960 and its first 0.8 s of speech as a wav."""
    from engine.media import cut_clip, load_audio, write_wav

    root = tmp_path_factory.mktemp("sweep_clip")
    video = root / "demo1 1s.mp4"
    cut_clip(media / "demo1_video.mp4", video, seconds=1.0, size=(540, 960))
    wav = write_wav(root / "speech.wav", load_audio(media / "demo1_audio.wav")[:SPEECH_SAMPLES])
    return video, wav


@pytest.fixture(scope="module")
def networks():
    from engine.eval.inputs import load_networks

    return load_networks(random_weights=True, stable=True)


# ---------------------------------------------------------------- settings and table (no runs)


def test_settings_parse_presets_overrides_and_refuse_bad_text():
    from engine.eval.sweep_settings import LIVE, parse_setting, plan_settings

    fast = parse_setting("fast+deepcache=off")
    assert (fast.config.steps, fast.config.deepcache_interval, fast.preset) == (10, None, "fast")
    live = parse_setting("live=120+chunk=8+steps=4")
    assert (live.mode, live.lookahead_ms, live.chunk_frames, live.config.steps) == (LIVE, 120.0, 8, 4)
    assert parse_setting("backend=onnxruntime").backend == "onnxruntime"
    planned, notes = plan_settings("reference", ["fast", "steps=10", "deepcache=1", "deepcache=off"])
    assert [s.name for s in planned] == ["reference", "fast", "deepcache=1"]  # steps=10 is fast, off = interval 1
    assert len(notes) == 2
    for bad in ("", "warp=3", "steps=two", "steps=0", "chunk=8", "backend=cuda", "slow", "steps=2+steps=3"):
        with pytest.raises(InvalidInputError):
            parse_setting(bad)


def test_frontier_keeps_rows_no_other_beats_on_speed_and_fidelity():
    from engine.eval.sweep_table import frontier

    rows = [{"status": "ok", "frames_per_s": fps, "psnr_mouth": p} for fps, p in
            [(1.0, 100.0), (2.0, 30.0), (1.5, 25.0), (3.0, 20.0), (3.0, 20.0)]]  # fmt: skip
    rows.append({"status": "failed", "frames_per_s": None, "psnr_mouth": None})
    rows.append({"status": "ok", "frames_per_s": 4.0, "psnr_mouth": None, "psnr_frame": 10.0})
    assert frontier(rows) == [True, True, False, True, True, False, True]


def test_table_files_are_written_whole_and_agree(tmp_path):
    """JSON / CSV / Markdown / PNG from a table built by hand (no runs): same rows, frontier, warning, no temp files."""
    from engine.eval.sweep import SweepRow, SweepTable
    from engine.eval.sweep_settings import parse_setting
    from engine.eval.sweep_table import write_table

    def row(text, wall, psnr, **kw):
        metrics = {"psnr_mouth": psnr, "psnr_frame": psnr, "lse_c": 1.0 + wall, "lse_d": float("nan")}
        return SweepRow(parse_setting(text), wall_s=wall, frames=50, metrics=metrics, **kw)

    rows = [row("reference", 10.0, 100.0), row("fast", 4.0, 31.5), row("steps=5", 5.0, 30.0),
            SweepRow(parse_setting("backend=tensorrt"), status="skipped", reason="needs CUDA")]  # fmt: skip
    table = SweepTable(video="/x/in.mp4", audio="/x/in.wav", model="tiny-random", device="cpu", dtype="fp32",
                       baseline="reference", random_model=True, random_eval_weights=False, rows=rows)  # fmt: skip
    paths = write_table(table, tmp_path / "new")
    data = json.loads(paths["json"].read_text())
    assert data["meaningless"] and "model" in data["warning"] and "eval networks" not in data["warning"]
    got = {r["name"]: r for r in data["rows"]}
    assert got["fast"]["speedup"] == pytest.approx(2.5) and got["fast"]["frames_per_s"] == pytest.approx(12.5)
    frontier = [got[n]["frontier"] for n in ("reference", "fast", "steps=5", "backend=tensorrt")]
    assert frontier == [True, True, False, False]
    assert got["fast"]["lse_d"] is None  # NaN -> null: the JSON stays standard
    assert got["backend=tensorrt"]["status"] == "skipped" and got["backend=tensorrt"]["wall_s"] is None
    with open(paths["csv"], newline="") as f:
        assert [r["name"] for r in csv.DictReader(f)] == list(got)
    md = paths["md"].read_text()
    assert "WARNING" in md and "`backend=tensorrt`: skipped: needs CUDA" in md and md.count("\n| ") == 5
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == sorted(p.name for p in paths.values())


# ---------------------------------------------------------------- bad inputs: typed, before any run


def _write_video(path, frames: int, *, speech: np.ndarray | None, value: int = 128) -> None:
    from engine.media import VideoWriter

    with VideoWriter(path, 96, 96, audio=speech) as writer:
        for _ in range(frames):
            writer.write(np.full((96, 96, 3), value, np.uint8))


def _sweep_cli(video, audio, out, *extra, face: tuple[str, ...] = ("--face", "mediapipe")) -> int:
    from engine.cli import main

    return main(["eval", "--sweep", "--video", str(video), "--audio", str(audio), "--out", str(out),
                 "--model", "tiny-random", "--random-weights", *face, *extra])  # fmt: skip


def test_bad_inputs_are_typed_errors_before_any_run(clip, mediapipe, tmp_path, monkeypatch):
    from engine.eval import sweep
    from engine.media import write_wav

    def no_model(*a, **k):  # any of these inputs reaching model loading is a failure
        raise AssertionError("a bad input reached model loading")

    monkeypatch.setattr("engine.pipeline.sdk.LipSync.from_pretrained", no_model)
    video, wav = clip
    silent = tmp_path / "silent.mp4"
    _write_video(silent, 10, speech=None)
    short = write_wav(tmp_path / "short.wav", np.zeros(4000, np.float32))  # 0.25 s: 6 frames < one 16-frame window
    faceless = tmp_path / "gray.mp4"
    _write_video(faceless, 10, speech=np.zeros(16000, np.float32))
    out = tmp_path / "out"
    assert _sweep_cli(video, silent, out) == InvalidInputError.exit_code  # no audio stream
    assert _sweep_cli(video, short, out, "--stable") == InvalidInputError.exit_code
    assert _sweep_cli(faceless, wav, out) == NoFaceError.exit_code
    assert _sweep_cli(video, wav, out, "--settings", "steps=many") == InvalidInputError.exit_code
    assert _sweep_cli(video, wav, out, face=("--box", "1,1,9,9")) == InvalidInputError.exit_code
    assert not out.exists()
    with pytest.raises(InvalidInputError, match="at least 16 frames"):
        sweep.check_inputs(str(video), str(short), sweep.EvalNetworks(stable=object()))


# ---------------------------------------------------------------- end to end


def _check_table(out, names: list[str], *, random_model: bool) -> list[dict]:
    data = json.loads((out / "sweep.json").read_text())
    assert data["format"] == "latentsync-eval-sweep" and data["meaningless"] is True
    assert data["random_eval_weights"] is True and data["random_model"] is random_model
    assert "meaningless" in data["warning"]
    rows = data["rows"]
    assert [r["name"] for r in rows] == names and data["baseline"] == names[0]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["frames"] == 22 and r["wall_s"] > 0 and r["frames_per_s"] == pytest.approx(22 / r["wall_s"])
        assert all(np.isfinite(r[k]) for k in ("lse_c", "lse_d", "stable_mean", "psnr_frame", "flicker_mouth"))
        assert -15 <= r["av_offset"] <= 15
    ref, other = rows[0], rows[1]
    assert ref["psnr_mouth"] == ref["psnr_frame"] == 100.0 and ref["speedup"] == 1.0  # the cap: identical videos
    assert ref["flicker_mouth"] == ref["flicker_reference"]
    assert 5.0 < other["psnr_mouth"] < 100.0 and other["psnr_mouth"] < other["psnr_frame"] < 100.0  # mouth differs
    assert other["flicker_reference"] == ref["flicker_mouth"]
    assert ref["frontier"]  # nothing beats the baseline's fidelity
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == names and float(table[1]["psnr_mouth"]) == pytest.approx(other["psnr_mouth"])
    assert "RANDOM WEIGHTS" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    return rows


@pytest.mark.slow
def test_sweep_end_to_end_on_a_real_clip(clip, mediapipe, networks, tmp_path):
    """Two cheap settings through `run_sweep` with the tiny-random U-Net and whisper and a narrow VAE
    (~45 s of CPU, minutes on a loaded machine: the tiny U-Net at 256 px dominates)."""
    from engine.eval.report import EvalOptions
    from engine.eval.sweep import SweepOptions, run_sweep
    from stream_helpers import micro_sync

    video, wav = clip
    options = SweepOptions(face="mediapipe", baseline=BASELINE, settings=(OTHER, BASELINE),
                           eval=EvalOptions(compute_ssim=False))
    table = run_sweep(video, wav, tmp_path, networks, options, sync=micro_sync())
    assert "is the same run as" in table.notes[0]
    rows = _check_table(tmp_path, [BASELINE, OTHER], random_model=True)
    assert rows[1]["ssim_mouth"] is None  # SSIM off


@pytest.mark.slow
def test_sweep_command_with_live_and_onnxruntime_rows(clip, mediapipe, tmp_path, capsys):
    """The command with the real tiny-random model: an offline row, a live row, an ONNX Runtime row."""
    video, wav = clip
    live, ort = f"{BASELINE}+live=0+chunk=8", f"{BASELINE}+backend=onnxruntime"
    code = _sweep_cli(video, wav, tmp_path, "--stable", "--baseline", BASELINE, "--settings", OTHER, live, ort)
    assert code == 0
    printed = capsys.readouterr().out
    assert "WARNING: RANDOM WEIGHTS" in printed and "sweep.png" in printed
    rows = _check_table(tmp_path, [BASELINE, OTHER, live, ort], random_model=True)
    assert rows[2]["mode"] == "live" and rows[2]["stream"]["chunks"] == 3 and rows[2]["ssim_mouth"] < 1.0
    assert rows[3]["backend"] == "onnxruntime" and rows[3]["setup_s"] > 0
    assert rows[3]["psnr_mouth"] > 40  # same settings as the baseline on another runtime: near-identical frames


def test_unavailable_backend_is_a_skipped_row_with_its_reason(tmp_path):
    """TensorRT on a CPU placement: the row is skipped (with why) and nothing runs."""
    from types import SimpleNamespace

    import torch

    from engine.eval.sweep import _Runners
    from engine.eval.sweep_settings import parse_setting

    base = SimpleNamespace(placement=SimpleNamespace(device=torch.device("cpu")), face="auto")
    runners = _Runners(base, None, "unused.mp4", np.zeros(16000, np.float32), tmp_path, warmup=True)
    row = runners.run(parse_setting("backend=tensorrt"), tmp_path / "never.mp4", repeats=1)
    assert row.status == "skipped" and "CUDA" in row.reason and row.wall_s is None
    assert not list(tmp_path.iterdir())
