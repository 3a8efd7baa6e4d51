"""Front ends on the engine core: concurrent SDK calls on one object, a chunk caller beside an offline job,
job admission, cancellation and deadlines, and no threads left after close()."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from engine.errors import DeadlineExceededError, QueueFullError
from stream_helpers import agreement, demo1_inputs, micro_sync, run_threads

SECONDS = 0.32  # 8 frames of each demo clip and of its speech: one chunk
FAST = dict(steps=1, guidance=1.0, deepcache=0)


@pytest.fixture(scope="module")
def clips(media, tmp_path_factory):
    """(video path, speech) of demo1 and demo2, cut to SECONDS at 540x960 (real PyAV media, real faces)."""
    from engine.media import cut_clip, load_audio

    root = tmp_path_factory.mktemp("clips")
    out = []
    for name in ("demo1", "demo2"):
        video = root / f"{name}.mp4"
        cut_clip(media / f"{name}_video.mp4", video, seconds=SECONDS, size=(540, 960))
        out.append((video, load_audio(media / f"{name}_audio.wav")[: int(SECONDS * 16000)]))
    return out


@pytest.fixture(scope="module")
def sync():
    s = micro_sync()
    yield s
    s.close()






def test_two_threads_calling_one_lipsync_get_their_solo_frames(sync, clips):
    def call(k):
        video, speech = clips[k]
        return lambda: sync(video, speech, face="mediapipe", seed=k, **FAST).frames

    solo = [call(k)() for k in range(2)]
    together = run_threads(call(0), call(1))  # one shared mediapipe interpreter used to crash one of them
    for got, want in zip(together, solo):
        worst, equal = agreement(got, want)
        assert worst <= 1 and equal >= 0.999, (worst, equal)
    assert sync._detectors.idle_count("mediapipe") == 2  # each concurrent job leased its own detector


def test_offline_job_beside_a_chunk_caller_on_another_thread(sync, clips, golden):
    from engine.pipeline.config import SyncConfig
    from engine.pipeline.core import StageTimer
    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.source import SourceCursor

    frames, landmarks, speech = demo1_inputs(golden, 8)
    core = sync.core
    plan = core.plan_audio(speech[: 640 * 16])
    config = SyncConfig(steps=1, guidance_scale=1.0, deepcache_interval=None, chunk_frames=8, seed=3)

    def session():  # what a streaming session's worker does: its own cursor, aligner and generator
        aligner = core.new_aligner()
        cursor = SourceCursor(frames, LandmarkArraySource(landmarks), aligner)
        generator, noise = core.start_noise(config.seed)
        out = []
        for start in (0, 8):
            out += core.sync_chunk(cursor.take(8), range(start, start + 8), plan.windows(start, start + 8), config,
                                   noise, generator, aligner, StageTimer())
        return np.stack([f.rgb for f in out])

    video, clip_speech = clips[0]

    def offline():
        return sync(video, clip_speech, face="mediapipe", seed=5, **FAST).frames

    solo = [session(), offline()]
    together = run_threads(session, offline)
    for got, want in zip(together, solo):
        worst, equal = agreement(got, want)
        assert worst <= 1 and equal >= 0.999, (worst, equal)


def test_job_admission_cancellation_within_one_chunk_and_queued_deadlines(sync, clips):
    from engine.pipeline.config import resolve_config
    from engine.pipeline.sdk import LipSync
    from engine.runtime import EnginePolicy

    s = LipSync(sync.models, sync.placement, policy=EnginePolicy(max_active_jobs=1, max_queued_jobs=2))
    config = resolve_config("reference", steps=1, guidance_scale=1.0)
    (video, speech), (video2, speech2) = clips
    long_speech = np.tile(speech, 6)  # 48 frames: 3 chunks, the source looped ping-pong
    delivered, first = [], threading.Event()

    def progress(done, total):
        delivered.append(done)
        first.set()

    a = s.submit(video, long_speech, config=config, face="mediapipe", progress=progress)
    b = s.submit(video2, speech2, config=config, face="mediapipe")  # waits for a's slot
    c = s.submit(video2, speech2, config=config, face="mediapipe", deadline=time.monotonic() + 0.05)
    t0 = time.monotonic()
    with pytest.raises(QueueFullError, match="expected fewer than 2 jobs waiting"):
        s.submit(video2, speech2, config=config, face="mediapipe")
    assert time.monotonic() - t0 < 1.0  # refused at once
    assert first.wait(300)
    assert a.cancel()
    assert s.core.engine.queued_chunks(a.key) == 0  # its queued device work is gone at once
    with pytest.raises(CancelledError):
        a.result(timeout=300)
    assert len(delivered) <= 16 + 16  # stopped within one chunk of the cancel
    assert b.result(timeout=300).num_frames == 8  # the freed slot went to the next job
    with pytest.raises(DeadlineExceededError, match="dropped without work"):
        c.result(timeout=300)
    s.close()
    assert not any(t.is_alive() for t in [s.core.engine._loop.thread])
    assert not [t for t in threading.enumerate() if t.name in ("lipsync-prepare", "lipsync-finish")]


def test_an_interrupted_call_stops_its_job_and_leaves_no_partial_file(sync, clips, tmp_path):
    video, speech = clips[0]
    writing = threading.Event()

    def interrupt():  # Ctrl-C (SIGTERM under `engine run`) while the job is writing its output
        if writing.wait(300):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sync(video, np.tile(speech, 6), tmp_path / "out.mp4", face="mediapipe",
             progress=lambda done, total: writing.set(), **FAST)
    assert list(tmp_path.iterdir()) == []  # the finish stage aborted its writer before the call returned
    deadline = time.monotonic() + 120
    while [t for t in threading.enumerate() if t.name in ("lipsync-prepare", "lipsync-finish")]:
        assert time.monotonic() < deadline, "the job's stage threads did not stop"
        time.sleep(0.1)
