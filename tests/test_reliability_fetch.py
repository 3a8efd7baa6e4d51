"""Issue 11.4 / 14.4: offline means no network for anything, and an unreachable hub fails fast with one message.

Network access is made impossible in these tests (a socket guard that raises on any DNS lookup or connect
that is not loopback, and on any child process), not merely hoped to fail fast.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main as cli_main
from engine.errors import CheckpointError
from test_media_reliability import write_clip, write_wav_header

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FAST_S = 3.0


class NetworkAccess(BaseException):
    """Raised by the guard; a BaseException so that no `except Exception` in the code under test hides it."""


def _host(address) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


@pytest.fixture
def no_network(monkeypatch):
    """Every non-loopback lookup/connect and every child process raises NetworkAccess; the attempts are recorded."""
    attempts: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host in LOOPBACK or host is None:
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(f"dns {host}")
        raise NetworkAccess(f"DNS lookup of {host}")

    def connect(self, address):
        if _host(address) in LOOPBACK or self.family == socket.AF_UNIX:
            return real_connect(self, address)
        attempts.append(f"connect {address}")
        raise NetworkAccess(f"connect to {address}")

    def popen(*args, **kwargs):
        attempts.append(f"process {args[0] if args else kwargs.get('args')}")
        raise NetworkAccess(f"child process {args[0] if args else kwargs}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(subprocess, "Popen", popen)
    for name in ("LATENTSYNC_ENGINE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return attempts


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """An engine cache holding tiny-random and no face models (as on a machine that never went online)."""
    from engine.weights.tiny import ensure_tiny_random

    root = tmp_path_factory.mktemp("engine-cache")
    ensure_tiny_random(root)
    return root


@pytest.fixture
def offline_job(tmp_path, tiny_cache, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("LATENTSYNC_ENGINE_CACHE", str(tiny_cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no copy of buffalo_l the user may have elsewhere
    audio = tmp_path / "speech.wav"
    write_wav_header(audio, 16000, (1000 * np.sin(np.arange(8000) / 10)).astype(np.int16))
    return {"video": write_clip(tmp_path / "face.mp4", frames=10, size=(96, 128)), "audio": audio}


# ----------------------------------------------------------------------------- 11.4 --offline
def test_run_offline_never_touches_the_network(offline_job, tmp_path, no_network, capsys, caplog):
    code = cli_main(["run", "--model", "tiny-random", "--offline", "--video", str(offline_job["video"]),
                     "--audio", str(offline_job["audio"]), "--output", str(tmp_path / "out.mp4"), "--no-progress"])
    err = capsys.readouterr().err
    assert no_network == []
    assert code == 5 and "offline mode is on" in err  # no face model cached: said plainly, nothing fetched
    assert "fetching" not in caplog.text
    assert not (tmp_path / "out.mp4").exists()


def test_avatar_prepare_offline_never_touches_the_network(offline_job, tmp_path, no_network, capsys, caplog):
    code = cli_main(["avatar", "prepare", "--model", "tiny-random", "--offline", "--video", str(offline_job["video"]),
                     "--out", str(tmp_path / "avatar")])
    assert no_network == []
    assert code == 5 and "offline mode is on" in capsys.readouterr().err
    assert "fetching" not in caplog.text and not (tmp_path / "avatar").exists()


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "LATENTSYNC_ENGINE_OFFLINE"])
def test_offline_environment_stops_every_fetch_path(tmp_path, no_network, monkeypatch, env):
    from engine.eval.weights import SYNCNET_V2, fetch_checkpoint
    from engine.face.detection import models
    from engine.weights import resolve_model

    monkeypatch.setenv(env, "1")
    model = models.ModelFile("pack/m.bin", "0" * 64)
    archive = models.Archive(urls=("https://files.example/pack.zip",), sha256=None, members={"m.bin": model},
                             license="test", pip_args=("pkg==1",))
    with pytest.raises(CheckpointError, match=f"offline mode is on.*{env}"):
        models.ensure(model, archive, root=tmp_path)
    with pytest.raises(CheckpointError, match="offline mode is on"):
        resolve_model("latentsync-1.6", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="offline mode is on"):
        fetch_checkpoint(SYNCNET_V2, cache_dir=tmp_path)
    assert no_network == []


def test_offline_mode_is_scoped_to_the_command(no_network):
    from engine.weights.fetch import is_offline, offline_mode

    assert not is_offline()
    with offline_mode(True):
        assert is_offline()
    assert not is_offline()  # a later command in the same process is online again


def test_every_download_goes_through_the_fetch_helper():
    """One fetch path: no module but engine/weights/fetch.py opens URLs, calls the hub client or hashes files."""
    needles = ("urlopen(", "hf_hub_download(", "get_hf_file_metadata(", "hashlib.sha256()")
    offenders = []
    for path in sorted((REPO / "engine").rglob("*.py")):
        if path.name == "fetch.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    allowed = {"engine/stream/avatar.py: hashlib.sha256()",  # a fingerprint of VAE weights, not a file hash
               "engine/face/detection/models.py: hashlib.sha256()"}  # hashes downloaded bytes in memory
    assert set(offenders) <= allowed, offenders


# ----------------------------------------------------------------------------- 14.4 hub unreachable
@pytest.fixture
def hub_unresolvable(monkeypatch):
    """DNS answers 'no such host' for everything but loopback, at once (a machine without network)."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host in LOOPBACK or host is None:
            return real(host, *args, **kwargs)
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    from engine.weights import fetch

    monkeypatch.setattr(fetch, "_resolved", set())
    return lookups


def test_unresolvable_hub_fails_fast_with_advice(tmp_path, hub_unresolvable, capfd):
    from engine.weights import resolve_model

    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        resolve_model("latentsync-1.6", cache_dir=tmp_path)
    assert time.perf_counter() - start < FAST_S  # was ~38 s of retries
    message = str(err.value)
    assert "huggingface.co" in message and "tiny-random" in message and "local" in message
    assert "Retrying" not in capfd.readouterr().err  # no retry noise at all
    assert hub_unresolvable == ["huggingface.co"]  # one lookup, no retry loop


def test_unresolvable_hub_still_uses_the_cache(tmp_path, hub_unresolvable):
    from test_weights import _fake_hub_repo

    blob = tmp_path / "tiny.pt"
    blob.write_bytes(b"weights")
    _fake_hub_repo(tmp_path / "hub", "ByteDance/LatentSync-1.6", {"whisper/tiny.pt": blob})
    from engine.weights.fetch import hub_file

    path = hub_file("ByteDance/LatentSync-1.6", "whisper/tiny.pt", cache_dir=tmp_path / "hub")
    assert path.read_bytes() == b"weights"


REFUSED_HUB = textwrap.dedent("""
    import socket, sys, time
    real = socket.getaddrinfo
    def getaddrinfo(host, *a, **k):
        if host == "hub.test":  # resolves, but nothing listens: the hub client's retry path
            return real("127.0.0.1", *a, **k)
        if host in ("127.0.0.1", "localhost", None):
            return real(host, *a, **k)
        raise RuntimeError("network access: " + str(host))
    socket.getaddrinfo = getaddrinfo
    real_connect = socket.socket.connect
    def connect(self, address):
        if isinstance(address, tuple) and address[0] == "127.0.0.1" and address[1] == 443:
            raise ConnectionRefusedError(111, "Connection refused")
        return real_connect(self, address)
    socket.socket.connect = connect
    time.sleep = lambda s: None  # the retries' back-off, skipped to keep the test short
    from engine.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_hub_warnings_printed_once_and_a_good_final_message(tmp_path):
    """A hub that resolves but refuses connections: the client's warnings appear once each (not twice)."""
    media = tmp_path / "face.mp4"
    write_clip(media, frames=5, size=(96, 128))
    env = {**os.environ, "HF_ENDPOINT": "https://hub.test", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO)}
    for name in ("HF_HUB_OFFLINE", "LATENTSYNC_ENGINE_OFFLINE", "https_proxy", "HTTPS_PROXY", "http_proxy",
                 "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", REFUSED_HUB, "run", "--video", str(media), "--audio", str(media),
                           "--output", str(tmp_path / "out.mp4"), "--no-progress"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 5, done.stderr
    retry_lines = [line for line in lines if "Retrying in 1s" in line]
    assert len(retry_lines) == 1, done.stderr  # was twice: raw by the hub's own handler, then by ours
    assert retry_lines[0].startswith("WARNING huggingface_hub")
    assert not [line for line in lines if line.startswith("'")], done.stderr  # no unformatted copies
    assert "tiny-random" in lines[-1] and lines[-1].startswith("error: DownloadError")
