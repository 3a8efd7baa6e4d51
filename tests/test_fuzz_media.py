"""Fuzzing the media entry points (probe, the demux preflight, video decode, audio load) with hypothesis.

Mutated copies of real clips (the HEVC demo clip, an H.264/AAC cut of it, a WAV and an MP3 of its speech) go to a
worker process that runs the entry points; the parent bounds each example's time. Every outcome must be a clean
result or a typed EngineError: a crash of the worker, a hang past the bound, or any other exception fails the test
with the shrunk mutation. The default run is small and deterministic (CI); `-m slow` runs a bigger random one.
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLE_TIMEOUT_S = 30.0  # a hang: far beyond what any of these small files needs
MAX_FRAMES = 12  # frames decoded per example (enough to cross the first GOP of the cut clips)
SEEDS = ("hevc.mp4", "h264_aac.mp4", "speech.wav", "speech.mp3")


# ----------------------------------------------------------------------------- the worker (child process)
def exercise(path: str) -> str:
    """Run every entry point on `path`; 'ok' / 'typed:<Error>' per entry point, or 'UNTYPED ...' with a traceback."""
    from engine.errors import EngineError
    from engine.media import iter_video_frames, load_audio, probe
    from engine.media.preflight import check_video_packets

    outcomes = []
    calls = (
        ("probe", lambda: probe(path)),
        ("packets", lambda: check_video_packets(path, probe(path, decode_check=False))),
        ("video", lambda: sum(1 for _ in iter_video_frames(path, max_frames=MAX_FRAMES))),
        ("audio", lambda: load_audio(path).size),
    )
    for name, call in calls:
        try:
            call()
            outcomes.append(f"{name}:ok")
        except EngineError as exc:
            outcomes.append(f"{name}:typed:{type(exc).__name__}")
        except Exception:  # noqa: BLE001 - exactly what the property forbids
            return f"UNTYPED in {name}: {traceback.format_exc()}"
    return " ".join(outcomes)


def _serve(conn) -> None:
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send(exercise(path))


class Worker:
    """One spawned child that runs `exercise` per request; a crash or hang is reported and the child replaced."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child_conn,), daemon=True)
        self.proc.start()
        child_conn.close()

    def run(self, path: Path) -> str:
        try:
            self.conn.send(str(path))
        except OSError:  # the worker is already dead
            code = self.proc.exitcode
            self._restart()
            return f"CRASH: the worker died (exit {code})"
        if not self.conn.poll(EXAMPLE_TIMEOUT_S):
            self._restart()
            return f"HANG: no answer within {EXAMPLE_TIMEOUT_S} s"
        try:
            return self.conn.recv()
        except EOFError:
            code = self.proc.exitcode
            self._restart()
            return f"CRASH: the worker died (exit {code})"

    def _restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


# ----------------------------------------------------------------------------- seeds and mutations
@pytest.fixture(scope="module")
def seeds(media, tmp_path_factory) -> dict[str, Path]:
    from engine.media import cut_clip, load_audio, write_wav
    from test_media import write_audio_file

    root = tmp_path_factory.mktemp("seeds")
    cut_clip(media / "demo1_video.mp4", root / "h264_aac.mp4", seconds=0.6, size=(136, 240))
    speech = load_audio(media / "demo1_audio.wav")[: 16000]
    write_wav(root / "speech.wav", speech)
    write_audio_file(root / "speech.mp3", speech[None, :], 16000, "mp3", "mono", "fltp")
    return {**{name: root / name for name in SEEDS if name != "hevc.mp4"}, "hevc.mp4": media / "demo1_video.mp4"}


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


# One mutation: (kind, position as a fraction of the file, size or byte value).
mutation = st.tuples(
    st.sampled_from(["truncate", "flip", "overwrite", "zero", "insert", "delete", "duplicate"]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=1, max_value=4096),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int]], salt: int) -> bytes:
    out = bytearray(data)
    for i, (kind, where, size) in enumerate(mutations):
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "truncate":
            out = out[: max(at, 1)]
        elif kind == "flip":
            for k in range(min(size, 64)):
                out[(at + k * 977) % len(out)] ^= 1 << ((salt + i + k) % 8)
        elif kind == "overwrite":
            block = bytes((salt * 31 + i * 7 + k * 13) % 256 for k in range(size))
            out[at:at + size] = block[: max(0, len(out) - at)]
        elif kind == "zero":
            out[at:at + size] = bytes(min(size, len(out) - at))
        elif kind == "insert":
            out[at:at] = bytes((salt + k) % 256 for k in range(size))
        elif kind == "delete":
            del out[at:at + size]
        else:  # duplicate a block in place (boxes and chunks repeated)
            out[at:at] = out[at:at + size]
        if not out:
            out = bytearray(b"\x00")
    return bytes(out)


def check_one(worker, seeds, tmp_path_factory, seed: str, mutations, salt: int) -> None:
    path = tmp_path_factory.mktemp("fuzz") / seed  # the real extension: demuxers are picked by content anyway
    path.write_bytes(mutate(seeds[seed].read_bytes(), mutations, salt))
    outcome = worker.run(path)
    assert not outcome.startswith(("UNTYPED", "HANG", "CRASH")), f"{seed} {mutations} salt={salt}:\n{outcome}"
    path.unlink()


FUZZ_INPUT = dict(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=4),
                  salt=st.integers(min_value=0, max_value=255))


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**FUZZ_INPUT)
def test_mutated_media_gives_a_result_or_a_typed_error(worker, seeds, tmp_path_factory, seed, mutations, salt):
    check_one(worker, seeds, tmp_path_factory, seed, mutations, salt)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**FUZZ_INPUT)
def test_mutated_media_many_examples(worker, seeds, tmp_path_factory, seed, mutations, salt):
    check_one(worker, seeds, tmp_path_factory, seed, mutations, salt)


def test_the_harness_reports_crashes_and_untyped_errors(worker, tmp_path):
    """The property can fail: the worker's verdicts for an untyped exception and for a crash."""
    assert exercise(str(tmp_path / "absent.mp4")).startswith("probe:typed:InvalidInputError")
    import engine.media as media_module

    real = media_module.probe
    try:
        media_module.probe = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        assert exercise(str(tmp_path / "absent.mp4")).startswith("UNTYPED in probe")
    finally:
        media_module.probe = real
    crashed = Worker()
    try:
        crashed.proc.kill()
        crashed.proc.join()
        assert crashed.run(tmp_path / "x.mp4").startswith("CRASH")
    finally:
        crashed.close()
