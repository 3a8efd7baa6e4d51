"""The Ray serving commands docs/cluster.md prints, run exactly as printed (slow: each starts a Ray cluster and Serve).

Both bind loopback only: `engine serve --ray local` does by itself (a private cluster), and `serve run`
gets Ray's single-machine mode from the environment here (a user's `serve run` binds as Ray decides).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
ENGINE_SERVE = ("engine serve --ray local --model tiny-random --device cpu --face mediapipe "
                "--video demo1=examples/media/demo1_video.mp4 --port 8766")
SERVE_RUN = ("serve run engine.cluster.serve_app:app_builder model=tiny-random device=cpu face=mediapipe "
             "videos=demo1=examples/media/demo1_video.mp4")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _session_starts(port: int) -> dict:
    import asyncio

    from websockets.asyncio.client import connect

    async def client():
        async with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "start", "source": "demo1", "realtime": False}))
            return json.loads(await asyncio.wait_for(ws.recv(), 120))

    return asyncio.run(client())


def _run_printed(command: str, port: int) -> None:
    assert f"`{command}`" in (REPO / "docs" / "cluster.md").read_text()
    argv = shlex.split(command)
    argv = [sys.executable, "-m", "engine", *argv[1:]] if argv[0] == "engine" else \
        [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", *argv[1:]]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not _ready(port):
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "never ready"
            time.sleep(1)
        assert _session_starts(port)["type"] == "started"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # engine serve exits as the shell's convention has it after Ctrl-C (130); Ray's `serve run` exits 0
    assert proc.returncode == (130 if argv[0] == sys.executable and argv[2] == "engine" else 0), out[-4000:]


@pytest.mark.slow
def test_engine_serve_on_ray_as_printed(media):
    _run_printed(ENGINE_SERVE, 8766)


@pytest.mark.slow
def test_serve_run_as_printed(media):
    _run_printed(SERVE_RUN, 8000)
