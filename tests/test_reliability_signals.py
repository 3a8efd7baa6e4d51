"""Issue 11.9: SIGTERM cleans up like Ctrl-C (exit 143); files of SIGKILLed jobs are found and removed later,
and a live job's temporary file is never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from test_media_reliability import write_clip, write_wav_header

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# A job the way the CLI runs one (engine.cli.main's SIGTERM handling), writing an mp4 for a long time.
WRITER_JOB = textwrap.dedent("""
    import sys, time, numpy as np
    from engine.cli.signals import Terminated, exit_status, terminate_like_interrupt
    from engine.media import VideoWriter
    try:
        with terminate_like_interrupt():
            with VideoWriter(sys.argv[1], 64, 48, preset="ultrafast", audio=np.zeros(16000 * 60, np.float32)) as w:
                for i in range(100000):
                    w.write(np.full((48, 64, 3), i % 255, np.uint8))
                    if i == 10:
                        print("writing", flush=True)
                    time.sleep(0.002)
    except KeyboardInterrupt as exc:
        sys.exit(exit_status(exc))
""")


def start_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER_JOB, str(target)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def partials(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.partial"))


def test_sigterm_removes_the_partial_file_and_exits_143(tmp_path):
    target = tmp_path / "out.mp4"
    proc = start_writer(target)
    assert len(partials(tmp_path)) == 1  # written beside the target under a hidden name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert list(tmp_path.iterdir()) == []


def test_sigint_still_exits_130(tmp_path):
    proc = start_writer(tmp_path / "out.mp4")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert list(tmp_path.iterdir()) == []


def test_sigkill_leftovers_are_named_by_owner_and_cleaned_by_the_next_job(tmp_path):
    from engine.media import VideoWriter
    from engine.media.paths import host_tag, partial_owner

    killed = start_writer(tmp_path / "a.mp4")
    live = start_writer(tmp_path / "b.mp4")
    try:
        killed.kill()
        killed.wait(timeout=30)
        owners = {partial_owner(p): p for p in partials(tmp_path)}
        assert set(owners) == {(killed.pid, host_tag()), (live.pid, host_tag())}  # findable: owner in the name
        with VideoWriter(tmp_path / "c.mp4", 64, 48, preset="ultrafast") as w:  # the next job in that directory
            w.write(np.zeros((48, 64, 3), np.uint8))
        left = {partial_owner(p) for p in partials(tmp_path)}
        assert left == {(live.pid, host_tag())}  # the dead job's file is gone, the live job's is untouched
        assert (tmp_path / "c.mp4").is_file()
    finally:
        live.send_signal(signal.SIGTERM)
        assert live.wait(timeout=30) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4"]


def test_run_preflight_removes_leftovers_before_any_model_loads(tmp_path, monkeypatch):
    """`engine run` cleans the output directory of dead jobs' files at start, not only when it writes."""
    from engine.cli import main as cli_main
    from engine.media.paths import host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.mp4.{dead.pid}-{host_tag()}-{'0' * 12}.partial"
    stale.write_bytes(b"half an mp4")
    other_host = tmp_path / f".out.mp4.{dead.pid}-ffffff-{'0' * 12}.partial"  # another machine's: not ours to judge
    other_host.write_bytes(b"x")
    monkeypatch.setattr("engine.pipeline.sdk.LipSync.from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    video = write_clip(tmp_path / "face.mp4", frames=5, size=(96, 128))
    assert cli_main(["run", "--video", str(video), "--audio", str(video), "--output", str(tmp_path / "out.mp4")]) == 130
    assert not stale.exists() and other_host.exists()


def test_sigterm_handler_is_scoped(tmp_path):
    """Outside a command the previous SIGTERM disposition is back (a library user's handler is not replaced)."""
    from engine.cli.signals import terminate_like_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with terminate_like_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_during_engine_run_cleans_up(tmp_path):
    """The real CLI on tiny-random: SIGTERM while the output is being written -> exit 143, nothing left (~40 s)."""
    video = write_clip(tmp_path / "face.mp4", frames=5, size=(96, 128))
    audio = tmp_path / "speech.wav"
    write_wav_header(audio, 16000, (1000 * np.sin(np.arange(48000) / 10)).astype(np.int16))
    track = tmp_path / "track.json"
    track.write_text(json.dumps({"landmarks3": [[[30, 50], [66, 50], [48, 75]]] * 5}))
    out = tmp_path / "out" / "synced.mp4"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--model", "tiny-random", "--video", str(video),
                             "--audio", str(audio), "--output", str(out), "--steps", "1", "--guidance", "1",
                             "--face", str(track), "--no-progress"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not partials(out.parent):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert "terminated" in proc.stderr.read()
    assert list(out.parent.iterdir()) == []
