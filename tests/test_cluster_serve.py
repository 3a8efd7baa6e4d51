"""`engine serve --ray`'s application on a private local Ray cluster, over loopback with a real client.

Two replicas (one CPU each, one session each) behind the Serve ingress: a session through the ingress
returns exactly the frames of a local `StreamSession` (JPEG-encoded the same way), /live and /ready
follow the replicas, and a third session when both replicas are full is refused at once with 1013.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from cluster_helpers import demo_cuts, local_cluster, micro_model_dir
from stream_helpers import fast_settings, speak_and_collect

pytest.importorskip("ray")
pytest.importorskip("fastapi")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def served(media, tmp_path_factory):
    from engine.cluster.options import ModelOptions
    from engine.cluster.serving import APP_NAME, ServeSpec

    root = tmp_path_factory.mktemp("cluster-serve")
    model, cuts = micro_model_dir(root), demo_cuts(media, root)
    port = _free_port()
    with local_cluster() as ray:  # noqa: F841 - connected for serve
        from ray import serve

        from engine.cluster.serve_app import build_app

        serve.start(http_options={"host": "127.0.0.1", "port": port})
        spec = ServeSpec(model=ModelOptions(model=str(model), device="cpu", face="mediapipe", backend="torch"),
                         videos=(("demo1", str(cuts["demo1"][0])),), sync=fast_settings(), replicas=2,
                         max_sessions=1, replica_host="127.0.0.1")
        try:
            serve.run(build_app(spec), name=APP_NAME, route_prefix="/", blocking=False)
            assert _http(port, "/live") == (200, "live\n")
            deadline = time.monotonic() + 600
            while _http(port, "/ready")[1] != "ready: 2 of 2 replicas, 2 free sessions\n":
                assert time.monotonic() < deadline, _http(port, "/status")
                time.sleep(0.5)
            yield port, model, cuts
        finally:
            serve.shutdown()


def _speech(cuts) -> np.ndarray:
    from engine.media import load_audio

    return np.round(load_audio(cuts["demo1"][1]) * 32767).astype(np.int16)


async def _start(port: int):
    from websockets.asyncio.client import connect

    ws = await connect(f"ws://127.0.0.1:{port}/stream", open_timeout=60, max_size=None)
    await ws.send(json.dumps({"type": "start", "source": "demo1", "mode": "utterance", "realtime": False}))
    return ws


def test_a_session_through_serve_returns_the_local_sessions_frames(served):
    import torch

    from engine.pipeline.sdk import LipSync
    from engine.stream import StreamConfig, StreamSession
    from engine.stream.server import decode_frame, encode_frame

    port, model, cuts = served
    speech = _speech(cuts)

    async def client():
        ws = await _start(port)
        started = json.loads(await asyncio.wait_for(ws.recv(), 120))
        frames, closed = await speak_and_collect(ws, [speech])
        await ws.wait_closed()
        return started, frames, closed, ws.close_code

    started, remote, closed, code = asyncio.run(client())
    assert started["type"] == "started" and closed["type"] == "closed" and code == 1000

    sync = LipSync.from_pretrained(str(model), device="cpu", face="mediapipe")
    config = StreamConfig(mode="utterance", realtime=False, sync=fast_settings())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each 1-CPU replica (see test_cluster_batch's references)
    try:
        with StreamSession(sync, str(cuts["demo1"][0]), config) as session:
            session.push_audio(speech, end_of_speech=True)
            session.finish()
            local = [decode_frame(encode_frame(f)) for f in session.frames(timeout=600)]
    finally:
        torch.set_num_threads(threads)
    assert len(remote) == len(local) == 8  # 0.32 s of speech, as long as the speech
    for (header, image), (local_header, local_image) in zip(remote, local):
        assert {k: header[k] for k in ("index", "kind", "utterance_frame", "final", "source_index")} == \
               {k: local_header[k] for k in ("index", "kind", "utterance_frame", "final", "source_index")}
        np.testing.assert_array_equal(image, local_image, err_msg=f"frame {header['index']}")


def test_a_full_cluster_answers_busy_at_once_and_ready_reports_the_replicas(served):
    from websockets.exceptions import ConnectionClosed

    port, _, _ = served

    async def client():
        held = [await _start(port) for _ in range(2)]  # one session on each replica
        for ws in held:
            assert json.loads(await asyncio.wait_for(ws.recv(), 120))["type"] == "started"
        status = json.loads(_http(port, "/status")[1])
        t0 = time.monotonic()
        ws = await _start(port)  # as engine serve: the slot is asked for with "start", refused with an error
        error = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 30)
        refused_after = time.monotonic() - t0
        ready_while_full = _http(port, "/ready")
        for ws in held:
            await ws.close()
        return status, error, info.value.rcvd, refused_after, ready_while_full

    status, error, rcvd, refused_after, ready_while_full = asyncio.run(client())
    assert error["type"] == "error" and error["error"] == "QueueFullError" and "try again later" in error["message"]
    assert rcvd.code == 1013 and rcvd.reason.startswith("busy: all 2 ready replicas hold their 1 sessions")
    assert refused_after < 10
    assert ready_while_full == (200, "ready: 2 of 2 replicas, 0 free sessions\n")
    assert sorted(r["holding"] for r in status["detail"]) == [1, 1] and status["free_sessions"] == 0
    deadline = time.monotonic() + 60  # closing the held sessions frees both replicas again
    while _http(port, "/ready")[1] != "ready: 2 of 2 replicas, 2 free sessions\n":
        assert time.monotonic() < deadline, _http(port, "/status")
        time.sleep(0.2)
