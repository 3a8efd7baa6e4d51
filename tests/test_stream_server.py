"""`engine serve` end to end on loopback with a real websockets client: health, frames, caps, teardown, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from stream_helpers import demo1_inputs, fast_settings, micro_sync, speak_and_collect, write_format1_avatar

SPEECH_SAMPLES = 9_600  # 0.6 s -> 30 feature rows -> 15 frames (length "audio"; 17 official)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lipsync-stream" and t.is_alive()]


class _Running:
    """A LipSyncServer on its own event loop thread, bound to an ephemeral loopback port."""

    def __init__(self, server) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.http("/ready")[0] != 200:
            assert time.monotonic() < deadline, self.http("/ready")
            time.sleep(0.2)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.server.active_sessions or _stream_threads():
            assert time.monotonic() < deadline, (self.server.active_sessions, _stream_threads())
            time.sleep(0.05)


@pytest.fixture(scope="module")
def running(golden, tmp_path_factory):
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, prepare_avatar
    from engine.stream.server import LipSyncServer, ServerConfig

    gate = threading.Event()
    avatar_dir = tmp_path_factory.mktemp("serve") / "demo1"

    def load():
        assert gate.wait(120), "the test never opened the gate"
        sync = micro_sync()
        frames, landmarks, _ = demo1_inputs(golden)
        return sync, {"demo1": prepare_avatar(sync, frames, avatar_dir, face=LandmarkArraySource(landmarks))}

    server = LipSyncServer(load, ServerConfig(port=0, max_sessions=1, max_pending=2, start_timeout_s=1.0,
                                              max_queued_seconds=5),
                           stream_defaults=StreamConfig(sync=fast_settings()))
    running = _Running(server)
    running.gate = gate
    yield running
    running.stop()


@pytest.fixture(scope="module")
def speech(golden):
    return np.round(demo1_inputs(golden)[2][:SPEECH_SAMPLES] * 32767).astype(np.int16)


def _connect(port: int):
    from websockets.asyncio.client import connect

    return connect(f"ws://127.0.0.1:{port}/stream", open_timeout=30)


async def _refusal(port: int):
    """Connect and wait for the server to close the connection; its close frame."""
    from websockets.exceptions import ConnectionClosed

    async with _connect(port) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    return info.value.rcvd


async def _start(ws, **options) -> dict:
    await ws.send(json.dumps({"type": "start", "source": "demo1", "realtime": False, **options}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
    assert reply["type"] == "started", reply
    return reply


def test_liveness_at_once_readiness_after_load_and_warm_up(running):
    assert running.http("/live") == (200, "live\n")
    status, body = running.http("/ready")
    assert status == 503 and "loading models" in body
    rcvd = asyncio.run(_refusal(running.port))
    assert rcvd.code == 1013 and "not ready: loading models" in rcvd.reason
    running.gate.set()
    running.wait_ready()
    assert running.server.sync is not None and running.http("/live")[0] == 200
    assert running.http("/nowhere")[0] == 404


def test_speech_in_frames_out_in_order(running, speech):
    from engine.audio import official_frame_count
    from engine.pipeline.config import output_frame_count

    running.wait_ready()

    async def client():
        async with _connect(running.port) as ws:
            started = await _start(ws, mode="live", chunk_frames=8, lookahead_ms=0)
            frames, closed = await speak_and_collect(ws, np.array_split(speech, 5))
            await ws.wait_closed()
            return started, frames, closed, ws.close_code

    started, frames, closed, code = asyncio.run(client())
    assert started["latency_floor_s"] == pytest.approx((8 + 3) / 25)
    expected = output_frame_count(official_frame_count(SPEECH_SAMPLES // 160 // 2), SPEECH_SAMPLES)  # 15
    assert [h["index"] for h, _ in frames] == list(range(expected))
    assert all(h["kind"] == "speech" and h["utterance"] == 0 for h, _ in frames)
    assert [h["audio_time_s"] for h, _ in frames] == [k / 25 for k in range(expected)]
    assert all(img.shape == (320, 320, 3) and img.dtype == np.uint8 for _, img in frames)
    assert closed["type"] == "closed" and closed["stats"]["frames_emitted"] == expected
    assert code == 1000
    running.wait_idle()


def test_over_the_cap_is_refused_and_disconnect_tears_down(running, speech):
    from websockets.exceptions import ConnectionClosed

    running.wait_ready()

    async def client():
        async with _connect(running.port) as first:
            await _start(first, mode="utterance")
            await first.send(np.tile(speech, 3).tobytes())
            await first.send(json.dumps({"type": "end_of_speech"}))
            async with _connect(running.port) as second:  # the cap is one session, counted from "start"
                await second.send(json.dumps({"type": "start", "source": "demo1"}))
                error = json.loads(await asyncio.wait_for(second.recv(), 60))
                with pytest.raises(ConnectionClosed) as info:
                    await second.recv()
            await asyncio.wait_for(first.recv(), 300)  # a frame: the session is mid-utterance
            assert running.server.active_sessions == 1 and _stream_threads()
        return error, info.value.rcvd  # leaving `first` disconnects mid-utterance

    error, rcvd = asyncio.run(client())
    assert error["error"] == "QueueFullError" and "expected at most 1 at once, found 1 running" in error["message"]
    assert rcvd.code == 1013 and "at most 1 sessions" in rcvd.reason
    running.wait_idle()  # the session was closed and its worker thread is gone


def test_connections_without_start_hold_no_session_slot_and_are_bounded(running):
    """11.10: idle connections have their own cap (2 here) and a short start timeout (1 s here)."""
    from websockets.exceptions import ConnectionClosed

    running.wait_ready()

    async def closed_with(ws) -> tuple[list, object]:
        messages = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                messages.append(await asyncio.wait_for(ws.recv(), 30))
        return messages, info.value.rcvd

    async def client():
        async with _connect(running.port) as idle1, _connect(running.port) as idle2:
            await asyncio.sleep(0.2)  # both are waiting for their start message
            assert running.server.pending_connections == 2 and running.server.active_sessions == 0
            async with _connect(running.port) as third:  # over the pre-start cap
                _, refused = await closed_with(third)
            t0 = time.monotonic()
            (messages, timed_out), _ = await asyncio.gather(closed_with(idle1), closed_with(idle2))
            waited = time.monotonic() - t0
        async with _connect(running.port) as real:  # the session slot was never taken
            started = await _start(real, mode="utterance")
            await real.send(json.dumps({"type": "close"}))
            closed = json.loads(await asyncio.wait_for(real.recv(), 60))
        return refused, messages, timed_out, waited, started, closed

    refused, messages, timed_out, waited, started, closed = asyncio.run(client())
    assert refused.code == 1013 and "at most 2 connections waiting to start" in refused.reason
    assert timed_out.code == 1008 and waited < 5
    assert 'expected \\"start\\" within 1 s, found none' in messages[0]
    assert started["type"] == "started" and closed["type"] == "closed"
    running.wait_idle()
    assert running.server.pending_connections == 0


def test_bad_requests_get_an_error_and_a_policy_close(running):
    from websockets.exceptions import ConnectionClosed

    running.wait_ready()

    async def client(first_message):
        async with _connect(running.port) as ws:
            await ws.send(first_message)
            error = json.loads(await asyncio.wait_for(ws.recv(), 60))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        return error, info.value.rcvd.code

    error, code = asyncio.run(client(json.dumps({"type": "start", "source": "/etc/passwd"})))
    assert error["error"] == "InvalidInputError" and "expected one of ['demo1']" in error["message"]
    assert code == 1008
    error, code = asyncio.run(client(json.dumps({"type": "start", "source": "demo1", "chunk_frames": 10})))
    assert "chunk_frames" in error["message"] and code == 1008
    error, code = asyncio.run(client(b"\x00\x01"))
    assert "first message" in error["message"] and code == 1008
    running.wait_idle()



# ----------------------------------------------------------------------------------------------- the documented client
def _stereo_wav(path, speech_int16: np.ndarray, rate: int = 32_000) -> None:
    """The speech as a stereo WAV at another rate than 16 kHz: the example client must resample and mix it down."""
    import wave

    upsampled = np.repeat(speech_int16, rate // 16_000)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.stack([upsampled, upsampled], axis=1).astype("<i2").tobytes())


def _documented_fields(doc: str, table_heading: str) -> set[str]:
    """The field names in the first column of the table under `table_heading`."""
    import re

    table = re.search(r"(?:^\|.*\n)+", doc[doc.index(table_heading):], re.M).group(0)
    return set(re.findall(r"^\| `(\w+)` \|", table, re.M))


def test_the_documented_example_client_streams_a_session(running, speech, tmp_path):
    """examples/ws_client.py (docs/serving.md), run as a user runs it in its own process against this server: one
    utterance's frames saved in order, and every message field the protocol reference lists is what was sent."""
    import re
    from pathlib import Path

    from engine.audio import official_frame_count
    from engine.pipeline.config import output_frame_count

    repo = Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "serving.md").read_text(encoding="utf-8")
    running.gate.set()  # also when this test runs alone
    running.wait_ready()
    audio, out = tmp_path / "speech.wav", tmp_path / "frames"
    _stereo_wav(audio, speech)
    done = subprocess.run([sys.executable, str(repo / "examples" / "ws_client.py"), "--url",
                           f"ws://127.0.0.1:{running.port}/stream", "--source", "demo1", "--audio", str(audio),
                           "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    headers = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    speech_frames = [h for h in headers if h["kind"] == "speech"]
    expected = output_frame_count(official_frame_count(SPEECH_SAMPLES // 160 // 2), SPEECH_SAMPLES)  # 15
    assert [h["utterance_frame"] for h in speech_frames] == list(range(expected)) and speech_frames[-1]["final"]
    images = sorted(out.glob("*.jpg"))
    assert len(images) == len(headers) and all(p.read_bytes()[:2] == b"\xff\xd8" for p in images)  # JPEG
    session = json.loads((out / "session.json").read_text())
    started, closed = session["started"], session["closed"]
    assert started["type"] == "started" and closed["type"] == "closed"
    assert closed["stats"]["frames_emitted"] >= len(headers)
    # docs/serving.md lists exactly what the server sent
    assert set(headers[0]) == _documented_fields(doc, "The frame header:")
    started_row = re.search(r"^\| `started` \|.*$", doc, re.M).group(0)
    assert set(re.findall(r"`(\w+)`: ", started_row)) == set(started)
    config_part, settings_part = started_row.split("`config`: ")[1].split("`settings`: ")
    assert set(re.findall(r"`(\w+)`", config_part)) == set(started["config"])
    assert set(re.findall(r"`(\w+)`", settings_part)) == set(started["settings"])
    stats = doc[doc.index("The `closed` message's `stats`"):]
    assert set(re.findall(r"`(\w+)`", stats[:stats.index("\n\n")])) - {"closed", "stats"} == set(closed["stats"])
    running.wait_idle()

def _health_only_server(load):
    """A server whose load function never yields models (no model work: health behaviour only)."""
    from engine.stream.server import LipSyncServer, ServerConfig

    return LipSyncServer(load, ServerConfig(port=0))


def test_ready_reports_an_engine_still_building_then_a_corrupt_engine(caplog):
    """R24: live at once; ready says what is being built while load runs, and why it failed after."""
    from engine.errors import IncompatibleEngineError

    building, release = threading.Event(), threading.Event()

    def load():
        server.set_status("building the TensorRT engine for the U-Net")
        building.set()
        assert release.wait(60)
        raise IncompatibleEngineError("unet.plan: expected a TensorRT 10 engine, found a corrupt file "
                                      "(deserialization failed)")

    server = _health_only_server(load)
    running = _Running(server)
    try:
        assert building.wait(30)
        assert running.http("/live") == (200, "live\n")
        status, body = running.http("/ready")
        assert status == 503 and body.startswith("not ready: building the TensorRT engine for the U-Net (")
        rcvd = asyncio.run(_refusal(running.port))
        assert rcvd.code == 1013 and "not ready: building the TensorRT engine" in rcvd.reason
        with caplog.at_level(logging.INFO):
            release.set()
            deadline = time.monotonic() + 30
            while not running.server.failed:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        status, body = running.http("/ready")
        assert status == 503
        assert body == ("not ready: failed: IncompatibleEngineError: unet.plan: expected a TensorRT 10 engine, "
                        "found a corrupt file (deserialization failed)\n")
        assert running.http("/live")[0] == 200  # the process still runs and says why it is not ready
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(failures) == 1 and failures[0].exc_info is None  # one line, no traceback for a typed error
    finally:
        release.set()
        running.stop()


def test_health_probes_log_one_debug_line_each_and_nothing_at_info(caplog):
    """14.8: a load balancer probing /live and /ready must not fill the log."""
    release = threading.Event()
    running = _Running(_health_only_server(lambda: release.wait(60) and None))
    try:
        with caplog.at_level(logging.DEBUG):
            caplog.clear()
            for path in ("/live", "/ready", "/live", "/ready"):
                running.http(path)
            time.sleep(0.2)  # the connection-closed records come after the response
        records = list(caplog.records)
        assert not [r.getMessage() for r in records if r.levelno >= logging.INFO]
        ours = [r.getMessage() for r in records if r.name == "engine.stream.server"]
        assert ours == ["GET /live -> 200", "GET /ready -> 503 (loading models (0 s))"] * 2
    finally:
        release.set()
        running.stop()


def test_serve_without_the_serve_extra_names_it_and_exits_7(capsys, monkeypatch):
    import importlib.util

    from engine.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "websockets" else real_find_spec(name, *a))
    # sources that do not exist: the extra is checked before anything else
    assert main(["serve", "--model", "tiny-random", "--video", "x=/nonexistent.mp4"]) == 7
    err = capsys.readouterr().err
    assert "MissingExtraError" in err and 'pip install -e ".[serve]"' in err and "websockets" in err


def test_serve_refuses_an_old_format_avatar_before_loading_any_model(tmp_path, capsys, monkeypatch):
    import engine.cli.serve as serve_cli
    from engine.cli import main

    monkeypatch.setattr(serve_cli, "load_sync", lambda args: pytest.fail("a model was loaded"))
    old = write_format1_avatar(tmp_path / "old")
    assert main(["serve", "--model", "tiny-random", "--avatar", f"me={old}", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "avatar format version: expected 2, found 1 (an avatar from an older engine" in err


@pytest.fixture(scope="module")
def face_clip(golden, tmp_path_factory) -> tuple:
    """A 6-frame face video and its face-track file, for `engine serve` in a subprocess."""
    from engine.media import VideoWriter

    frames, landmarks, _ = demo1_inputs(golden, 6)
    root = tmp_path_factory.mktemp("clip")
    with VideoWriter(root / "face.mp4", frames.shape[2], frames.shape[1]) as writer:
        for frame in frames:
            writer.write(frame)
    (root / "track.json").write_text(json.dumps({"landmarks3": landmarks.tolist()}))
    return root / "face.mp4", root / "track.json"


def test_sigterm_closes_sessions_and_exits_143(face_clip):
    """`engine serve` in a real process on loopback: ready, a live session streaming, SIGTERM ->
    the client sees 1001 (going away), the process exits 143 within seconds, with no traceback."""
    from websockets.exceptions import ConnectionClosed

    video, track = face_clip
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--model", "tiny-random", "--device", "cpu", "--face", str(track),
         "--video", f"demo1={video}", "--port", "0", "--backend", "torch", "--steps", "1", "--guidance", "1.0", "--seed", "7"],
        cwd=repo, env={**os.environ, "PYTHONPATH": repo}, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "serving on ws://" in line:
                port = int(line.split("serving on ws://127.0.0.1:", 1)[1].split()[0])
        running = _Running.__new__(_Running)  # only its HTTP helpers: the server runs in the subprocess
        running.port = port
        assert running.http("/live")[0] == 200
        running.wait_ready(timeout=300)

        async def client():
            async with _connect(port) as ws:
                started = await _start(ws, mode="live", realtime=True)
                await asyncio.wait_for(ws.recv(), 60)  # an idle frame: the session is streaming
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await asyncio.wait_for(ws.recv(), 60)
                return started, info.value.rcvd, time.monotonic() - t0

        started, rcvd, took = asyncio.run(client())
        rc = proc.wait(timeout=60)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = "".join(lines) + rest
    assert started["settings"]["steps"] == 1 and started["settings"]["guidance_scale"] == 1.0
    assert started["settings"]["seed"] == 7  # the generation overrides reach the sessions
    assert rcvd.code == 1001 and took < 30
    assert rc == 143, log_text
    assert "SIGTERM: shutting down (1 sessions open)" in log_text and "stopped" in log_text
    assert "Traceback" not in log_text
