"""Barge-in (`StreamSession.interrupt`) and the speech each frame carries (`StreamFrame.audio`).

The source is one demo1 frame repeated: a still avatar (a photo), so the source position a
session has reached does not change what an utterance looks like, and an utterance after an
interruption can be compared bit for bit with the same utterance in a fresh session.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.constants import SAMPLES_PER_FRAME
from stream_helpers import fast_settings, micro_sync, still_inputs

SPEECH_SAMPLES = 8_000  # 0.5 s -> 13 frames (length "audio")
CHUNK = 8


@pytest.fixture(scope="module")
def sync():
    return micro_sync()


@pytest.fixture(scope="module")
def still(golden):
    """(frames [10,320,320,3] all equal, landmarks [10,3,2], speech [14400] float32)."""
    frames, landmarks, audio = still_inputs(golden)
    return frames, landmarks, audio[:SPEECH_SAMPLES]


def _session(sync, still, **config):
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    frames, landmarks, _ = still
    config.setdefault("realtime", False)
    config = StreamConfig(mode="live", chunk_frames=CHUNK, lookahead_ms=0, sync=fast_settings(), **config)
    return StreamSession(sync, frames, config, face=LandmarkArraySource(landmarks))


@pytest.fixture(scope="module")
def fresh(sync, still):
    """The utterance's frames in a fresh session."""
    session = _session(sync, still)
    session.push_audio(still[2], end_of_speech=True)
    session.finish()
    frames = list(session.frames(timeout=300))
    session.close()
    return frames


def test_each_frame_carries_its_own_speech(fresh, still):
    speech = still[2]
    assert len(fresh) == -(-speech.size // SAMPLES_PER_FRAME) == 13
    assert all(f.audio.dtype == np.float32 and f.audio.shape == (SAMPLES_PER_FRAME,) for f in fresh)
    joined = np.concatenate([f.audio for f in fresh])
    assert np.array_equal(joined[:speech.size], speech)
    assert not joined[speech.size:].any()  # the last frame is padded with silence


def test_interrupt_mid_utterance_then_new_utterance_equals_a_fresh_session(sync, still, fresh):
    speech = still[2]
    session = _session(sync, still)
    session.push_audio(np.tile(speech, 4), end_of_speech=True)  # 3.6 s: 90 frames, many chunks
    first = session.next_frame(timeout=300)
    assert first is not None and first.kind == "speech" and first.utterance == 0
    dropped = session.interrupt()
    assert dropped["samples"] > 0  # speech that had not become frames yet
    assert sync.core.engine.queued_chunks(session.renderer.job) == 0  # its queued chunks left the core
    session.push_audio(speech, end_of_speech=True)
    session.finish()
    rest = list(session.frames(timeout=300))
    session.close()
    stale = [f for f in rest if f.utterance == 0]
    assert len(stale) <= 1  # at most the frame being handed over when the interruption came
    new = [f for f in rest if f.utterance == 1]
    assert len(new) == len(fresh) == 13
    assert [f.utterance_frame for f in new] == list(range(13)) and new[-1].final
    assert np.array_equal(np.stack([f.rgb for f in new]), np.stack([f.rgb for f in fresh]))
    assert np.array_equal(np.concatenate([f.audio for f in new]), np.concatenate([f.audio for f in fresh]))
    assert session.stats["frames_emitted"] < 90  # the interrupted utterance's remaining chunks were never made


def test_interrupt_returns_to_idle_frames_within_one_chunk(sync, still):
    speech = still[2]
    session = _session(sync, still, realtime=True)
    try:
        session.push_audio(np.tile(speech, 4), end_of_speech=True)
        while (frame := session.next_frame(timeout=300)).kind != "speech":
            pass
        chunk_s = max(session.chunk_seconds)
        t0 = time.perf_counter()
        session.interrupt()
        after = []
        while not after or after[-1].kind != "idle":
            frame = session.next_frame(timeout=60)
            assert frame is not None
            after.append(frame)
        took = time.perf_counter() - t0
        assert sum(f.kind == "speech" for f in after) <= 1
        assert took < 1.5 * chunk_s + 1.0, (took, chunk_s)
        assert not after[-1].audio.any()  # idle frames carry silence
        idle = [session.next_frame(timeout=60) for _ in range(5)]  # the timeline goes on, no speech left
        assert all(f is not None and f.kind == "idle" for f in idle)
    finally:
        session.close()
    with pytest.raises(Exception, match="closed"):
        session.interrupt()
