"""The documented minimal client (examples/ws_client.py, docs/serving.md) against a real `LipSyncServer` on loopback:
it runs as a user runs it, in its own process, and every message field docs/serving.md lists is what the server sends.

The server is the real WebSocket server over the tiny-random model (with the narrow VAE of the streaming tests) and
an avatar prepared from the golden demo1 frames; one short utterance (0.6 s) keeps it cheap.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave

import numpy as np
import pytest

from conftest import REPO_ROOT
from stream_helpers import demo1_inputs, fast_settings, micro_sync

pytest.importorskip("websockets")

CLIENT = REPO_ROOT / "examples" / "ws_client.py"
SERVING_DOC = REPO_ROOT / "docs" / "serving.md"
SPEECH_SAMPLES = 9_600  # 0.6 s at 16 kHz -> 15 frames (length "audio")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def server_port(golden, tmp_path_factory):
    """A LipSyncServer on its own event loop thread, on an ephemeral loopback port, ready."""
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, prepare_avatar
    from engine.stream.server import LipSyncServer, ServerConfig

    avatar_dir = tmp_path_factory.mktemp("ws-client") / "demo1"

    def load():
        sync = micro_sync()
        frames, landmarks, _ = demo1_inputs(golden)
        return sync, {"demo1": prepare_avatar(sync, frames, avatar_dir, face=LandmarkArraySource(landmarks))}

    server = LipSyncServer(load, ServerConfig(port=0, max_sessions=1), stream_defaults=StreamConfig(sync=fast_settings()))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        deadline = time.monotonic() + 300
        while not _ready(port):
            assert time.monotonic() < deadline and not server.failed, server.readiness()
            time.sleep(0.2)
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _stereo_wav(path, golden, rate: int = 32_000) -> None:
    """demo1's first 0.6 s of speech as a stereo WAV at another rate: the client must resample and mix it down."""
    speech = demo1_inputs(golden)[2][:SPEECH_SAMPLES]  # float32 [9600] at 16 kHz
    upsampled = np.repeat(speech, rate // 16_000)
    pcm = np.round(np.stack([upsampled, upsampled], axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())


def _documented_fields(table_heading: str) -> set[str]:
    """The field names in the first column of the table under `table_heading` in docs/serving.md."""
    text = SERVING_DOC.read_text(encoding="utf-8")
    section = text[text.index(table_heading):]
    table = re.search(r"(?:^\|.*\n)+", section, re.M).group(0)
    return set(re.findall(r"^\| `(\w+)` \|", table, re.M))


def test_the_example_client_streams_a_session_from_a_real_server(server_port, golden, tmp_path):
    from engine.audio import official_frame_count
    from engine.pipeline.config import output_frame_count

    audio, out = tmp_path / "speech.wav", tmp_path / "frames"
    _stereo_wav(audio, golden)
    done = subprocess.run([sys.executable, str(CLIENT), "--url", f"ws://127.0.0.1:{server_port}/stream",
                           "--source", "demo1", "--audio", str(audio), "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    headers = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    speech = [h for h in headers if h["kind"] == "speech"]
    expected = output_frame_count(official_frame_count(SPEECH_SAMPLES // 160 // 2), SPEECH_SAMPLES)  # 15
    assert len(speech) == expected
    assert [h["utterance_frame"] for h in speech] == list(range(len(speech))) and speech[-1]["final"]
    images = sorted(out.glob("*.jpg"))
    assert len(images) == len(headers) and all(p.read_bytes()[:2] == b"\xff\xd8" for p in images)  # JPEG

    session = json.loads((out / "session.json").read_text())
    started, closed = session["started"], session["closed"]
    assert started["type"] == "started" and started["frame_format"] == "jpeg" and closed["type"] == "closed"
    assert closed["stats"]["frames_emitted"] >= len(headers)
    # what docs/serving.md lists is exactly what the server sent
    assert set(headers[0]) == _documented_fields("The frame header:")
    started_doc = SERVING_DOC.read_text(encoding="utf-8")
    started_row = re.search(r"^\| `started` \|.*$", started_doc, re.M).group(0)
    assert set(re.findall(r"`(\w+)`: ", started_row)) == set(started)
    config_part, settings_part = started_row.split("`config`: ")[1].split("`settings`: ")
    assert set(re.findall(r"`(\w+)`", config_part)) == set(started["config"])
    assert set(re.findall(r"`(\w+)`", settings_part)) == set(started["settings"])
    stats_paragraph = started_doc[started_doc.index("The `closed` message's `stats`"):]
    stats_paragraph = stats_paragraph[:stats_paragraph.index("\n\n")]
    assert set(re.findall(r"`(\w+)`", stats_paragraph)) - {"closed", "stats"} == set(closed["stats"])
