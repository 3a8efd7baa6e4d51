"""`engine eval` as a newcomer meets it: the documented form works with the default face source, a missing
evaluator checkpoint names the options that help, the summary says what each score came from; the shared
progress bar (log lines above it, average-rate ETA); the sweep's per-row warm-up."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest

from engine.errors import CheckpointError


@pytest.fixture(scope="module")
def face_clip(media, tmp_path_factory):
    """demo1 cut to 1 s at 540x960 (a real face), with its own speech track."""
    from engine.media import cut_clip

    root = tmp_path_factory.mktemp("eval_cli")
    video = root / "clip.mp4"
    cut_clip(media / "demo1_video.mp4", video, seconds=1.0, size=(540, 960))
    return video


def test_eval_without_face_option_defaults_to_auto(face_clip, tmp_path, capsys):
    """The README form `engine eval --video OUT.mp4 --audio SPEECH` (plus --random-weights: no weights here)."""
    from engine.cli import main

    out = tmp_path / "report.json"
    code = main(["eval", "--video", str(face_clip), "--audio", str(face_clip), "--random-weights", "--stable",
                 "--json", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    frames = report["frames"]
    assert report["face_tracks"] == [[0, frames]]
    printed = capsys.readouterr().out
    assert f"{frames} frames, {frames} with a face in 1 track(s)" in printed
    windows = report["lse"]["tracks"][0]["n_windows"]
    assert f"(mouths of {frames} frames, {windows} windows)" in printed
    assert "windows of 16 frames (16 frames, aligned faces)" in printed


def test_eval_help_says_face_is_optional(capsys):
    from engine.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optional (default auto, as `engine run`)" in text


def test_missing_evaluator_weights_name_the_options(face_clip, monkeypatch, capsys):
    from engine.cli import main
    from engine.eval import weights

    def unreachable(spec, **kw):
        raise CheckpointError(f"{spec.repo_id}/{spec.filename}: the hub could not be reached")

    monkeypatch.setattr(weights, "fetch_checkpoint", unreachable)
    assert main(["eval", "--video", str(face_clip), "--no-progress"]) == CheckpointError.exit_code
    err = capsys.readouterr().err
    for option in ("--syncnet-weights", "--no-syncnet", "--random-weights", "could not be reached"):
        assert option in err, err
    assert main(["eval", "--video", str(face_clip), "--no-syncnet", "--stable", "--no-progress"]) == 5
    err = capsys.readouterr().err
    assert "--stable-syncnet-weights" in err and "leave out --stable" in err
    # a file the user gave is reported as it is (its own error names it), not as a download problem
    assert main(["eval", "--video", str(face_clip), "--syncnet-weights", "/nonexistent.model", "--no-progress"]) != 0
    assert "--no-syncnet" not in capsys.readouterr().err


# ---------------------------------------------------------------- the shared progress bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_prints_log_lines_above_the_bar(monkeypatch):
    import sys

    from engine.cli.progress import progress_bar

    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)  # the CLI logs to stderr, where the bar is drawn
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress_bar(total=32, desc="lip-sync", stream=stream) as bar:
            assert bar.shown and bar._bar.smoothing == 0  # average rate: bursts of 16 frames do not swing the ETA
            bar.callback(16, 32)
            logging.getLogger("engine.test").warning("a log line")
            bar.callback(32, 32)
    finally:
        root.removeHandler(handler)
    lines = stream.getvalue().replace("\r", "\n").splitlines()
    logged = [line for line in lines if "a log line" in line]
    assert logged == ["a log line"], lines  # on a line of its own, not glued to the bar
    assert any("32/32" in line for line in lines)


def test_progress_bar_is_silent_off_a_terminal():
    from engine.cli.progress import progress_bar

    stream = io.StringIO()
    with progress_bar(total=5, desc="x", stream=stream) as bar:
        bar.callback(3, 5)
        bar.restart("y", 2)
        bar.update()
    assert stream.getvalue() == "" and not bar.shown and (bar.n, bar.total) == (1, 2)
    with progress_bar(total=5, desc="x", stream=_Terminal(), enabled=False) as bar:
        assert not bar.shown


# ---------------------------------------------------------------- sweep timing


def test_each_sweep_row_is_timed_after_a_warm_up_of_its_own(tmp_path, monkeypatch):
    """Every row first runs one untimed chunk with its own settings, so the first row absorbs nothing."""
    from types import SimpleNamespace

    import torch

    from engine.eval import sweep_runs
    from engine.eval.sweep import WARMUP_FRAMES, _Runners
    from engine.eval.sweep_settings import parse_setting

    calls = []

    def fake_run(sync, setting, video, speech, faces, output, progress=None):
        calls.append((setting.name, speech.size, output.name))
        output.write_bytes(b"mp4")
        return sweep_runs.RunResult(output, 1.0, speech.size // 640)

    monkeypatch.setattr(sweep_runs, "run_setting", fake_run)
    sync = SimpleNamespace(placement=SimpleNamespace(device=torch.device("cpu")))
    speech = np.zeros(100 * 640, np.float32)
    runners = _Runners(sync, None, "in.mp4", speech, tmp_path, warmup=True)
    for k, text in enumerate(("steps=1", "steps=2", "steps=1+seed=2")):
        row = runners.run(parse_setting(text), tmp_path / f"{k}.mp4", repeats=2)
        assert row.status == "ok" and row.wall_runs_s == [1.0, 1.0] and row.frames == 100
    chunk = WARMUP_FRAMES * 640
    assert calls == [(name, size, out) for k, name in enumerate(("steps=1", "steps=2", "steps=1+seed=2"))
                     for size, out in ((chunk, f".warmup_{name.replace('=', '_').replace('+', '_')}.mp4"),
                                       (speech.size, f"{k}.mp4"), (speech.size, f"{k}.mp4"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.mp4", "1.mp4", "2.mp4"]  # warm-up files removed
    calls.clear()
    _Runners(sync, None, "in.mp4", speech, tmp_path, warmup=False).run(parse_setting("steps=1"), tmp_path / "x.mp4", 1)
    assert [c[1] for c in calls] == [speech.size]


def test_sweep_without_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    from engine import extras
    from engine.cli import main

    real = extras.missing_modules
    monkeypatch.setattr(extras, "missing_modules", lambda name: ["matplotlib"] if name == "plot" else real(name))
    code = main(["eval", "--sweep", "--video", "x.mp4", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == extras.MissingExtraError.exit_code == 7
    err = capsys.readouterr().err
    assert 'pip install -e ".[plot]"' in err and "--no-plot" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
