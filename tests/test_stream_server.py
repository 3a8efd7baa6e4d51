"""`engine serve` end to end on loopback with a real websockets client: health, frames, cap, teardown."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from stream_helpers import demo1_inputs, fast_settings, micro_sync

SPEECH_SAMPLES = 9_600  # 0.6 s -> 30 feature rows -> 17 frames


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

    server = LipSyncServer(load, ServerConfig(port=0, max_sessions=1, max_queued_seconds=5),
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


async def _start(ws, **options) -> dict:
    await ws.send(json.dumps({"type": "start", "source": "demo1", "realtime": False, **options}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
    assert reply["type"] == "started", reply
    return reply


def test_liveness_at_once_readiness_after_load_and_warm_up(running):
    from websockets.exceptions import ConnectionClosed

    assert running.http("/live") == (200, "live\n")
    status, body = running.http("/ready")
    assert status == 503 and "loading models" in body

    async def refused_while_loading():
        async with _connect(running.port) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
        return info.value.rcvd

    rcvd = asyncio.run(refused_while_loading())
    assert rcvd.code == 1013 and "not ready" in rcvd.reason
    running.gate.set()
    running.wait_ready()
    assert running.server.sync is not None and running.http("/live")[0] == 200
    assert running.http("/nowhere")[0] == 404


def test_speech_in_frames_out_in_order(running, speech):
    from engine.audio import official_frame_count
    from engine.stream.server import decode_frame

    running.wait_ready()

    async def client():
        async with _connect(running.port) as ws:
            started = await _start(ws, mode="live", chunk_frames=8, lookahead_ms=0)
            for piece in np.array_split(speech, 5):
                await ws.send(piece.tobytes())
            await ws.send(json.dumps({"type": "end_of_speech"}))
            frames = []
            while not (frames and frames[-1][0]["final"]):
                frames.append(decode_frame(await asyncio.wait_for(ws.recv(), 300)))
            await ws.send(json.dumps({"type": "close"}))
            closed = json.loads(await asyncio.wait_for(ws.recv(), 60))
            await ws.wait_closed()
            return started, frames, closed, ws.close_code

    started, frames, closed, code = asyncio.run(client())
    assert started["latency_floor_s"] == pytest.approx((8 + 3) / 25)
    expected = official_frame_count(SPEECH_SAMPLES // 160 // 2)
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
            async with _connect(running.port) as second:  # the cap is one session
                with pytest.raises(ConnectionClosed) as info:
                    await second.recv()
            await asyncio.wait_for(first.recv(), 300)  # a frame: the session is mid-utterance
            assert running.server.active_sessions == 1 and _stream_threads()
        return info.value.rcvd  # leaving `first` disconnects mid-utterance

    rcvd = asyncio.run(client())
    assert rcvd.code == 1013 and "at most 1 sessions" in rcvd.reason
    running.wait_idle()  # the session was closed and its worker thread is gone


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
