"""Streaming SDK: utterance mode equals the offline run bit for bit, live mode, avatars, bounds and cancellation."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import InvalidInputError, QueueFullError
from stream_helpers import SOURCE_FRAMES, demo1_inputs, fast_settings, micro_sync, write_format1_avatar

SPEECH_SAMPLES = 14_400  # 0.9 s of demo1 speech -> 45 feature rows -> chunks of 16 + 8 (ping-pong), 23 frames shown
SPEECH_FRAMES = 23  # as long as the speech (length "audio", `engine run`'s default); "official": 24


@pytest.fixture(scope="module")
def sync():
    return micro_sync()


@pytest.fixture(scope="module")
def inputs(golden):
    frames, landmarks, audio = demo1_inputs(golden)
    return frames, landmarks, audio[:SPEECH_SAMPLES]


def _faces(landmarks):
    from engine.pipeline.faces import LandmarkArraySource

    return LandmarkArraySource(landmarks)


def _session(sync, source, landmarks=None, **config):
    from engine.stream import StreamConfig, StreamSession

    config.setdefault("realtime", False)
    config.setdefault("sync", fast_settings())
    return StreamSession(sync, source, StreamConfig(**config), face=None if landmarks is None else _faces(landmarks))


def _run_utterance(session, speech) -> list:
    session.push_audio(speech)
    session.end_of_speech()
    session.finish()
    frames = list(session.frames(timeout=300))
    session.close()
    return frames


@pytest.fixture(scope="module")
def offline(sync, inputs):
    frames, landmarks, speech = inputs
    return sync(frames, speech, steps=1, guidance=1.0, face=_faces(landmarks)).frames  # [L,H,W,3], length "audio"


@pytest.fixture(scope="module")
def avatar(sync, inputs, tmp_path_factory):
    from engine.stream import prepare_avatar

    frames, landmarks, _ = inputs
    return prepare_avatar(sync, frames, tmp_path_factory.mktemp("avatars") / "demo1", face=_faces(landmarks))


def test_utterance_mode_is_bit_identical_to_offline(sync, inputs, offline):
    """Both length policies: as long as the speech (the default, as `engine run`), and the official N//2 + 2."""
    from engine.audio import official_frame_count
    from engine.audio.features import audio_features

    frames, landmarks, speech = inputs
    out = _run_utterance(_session(sync, frames, landmarks, mode="utterance"), speech)
    assert len(out) == -(-speech.size // SAMPLES_PER_FRAME) == SPEECH_FRAMES == len(offline)
    assert [f.index for f in out] == list(range(len(out)))
    assert all(f.kind == "speech" and f.utterance == 0 for f in out)
    assert [f.final for f in out] == [False] * (len(out) - 1) + [True]
    assert [f.audio_time_s for f in out] == [k * SAMPLES_PER_FRAME / SAMPLE_RATE for k in range(len(out))]
    assert np.array_equal(np.stack([f.rgb for f in out]), offline)

    official = _run_utterance(_session(sync, frames, landmarks, mode="utterance", length="official"), speech)
    assert len(official) == official_frame_count(audio_features(speech, sync.core.audio_encoder).shape[0]) == 24
    want = sync(frames, speech, steps=1, guidance=1.0, face=_faces(landmarks), length="official").frames
    assert np.array_equal(np.stack([f.rgb for f in official]), want)
    assert np.array_equal(want[:SPEECH_FRAMES], offline)  # the same frames, two more at the end


@pytest.mark.parametrize("chunk", [8, 12, 16])
def test_live_mode_makes_chunks_before_the_end_and_the_official_count(sync, inputs, offline, chunk):
    from engine.stream.live_features import samples_needed

    frames, landmarks, speech = inputs
    session = _session(sync, frames, landmarks, mode="live", chunk_frames=chunk, lookahead_ms=0)
    first = samples_needed(chunk - 1, 0)
    assert first < speech.size
    pcm16 = np.round(speech * 32767).astype(np.int16)
    for piece in np.array_split(pcm16[:first], 3):  # int16 in uneven pieces
        session.push_audio(piece)
    early = [session.next_frame(timeout=300) for _ in range(chunk)]  # made before the speech ended
    assert all(f is not None and f.kind == "speech" for f in early)
    session.push_audio(speech[first:])  # float32 for the rest
    session.end_of_speech()
    session.finish()
    out = early + list(session.frames(timeout=300))
    session.close()
    assert len(out) == len(offline)  # the utterance's frame count (length "audio") once it has ended
    assert [f.utterance_frame for f in out] == list(range(len(out)))
    assert out[-1].final and not any(f.final for f in out[:-1])
    assert session.stats["chunks"] == -(-len(out) // chunk)


def test_live_feature_drift_is_sane_and_shrinks_with_lookahead(sync, media):
    from engine.audio import official_frame_count
    from engine.audio.features import audio_features
    from engine.media import load_audio
    from engine.stream.live_features import live_feature_drift

    speech = load_audio(media / "demo1_audio.wav")[: 2 * SAMPLE_RATE]
    encoder = sync.core.audio_encoder
    drift = {ms: live_feature_drift(speech, encoder, lookahead_ms=ms, chunk_frames=16) for ms in (0, 480)}
    frames = official_frame_count(audio_features(speech, encoder).shape[0])
    for d in drift.values():
        assert d["frames"] == frames
        assert 0.0 < d["mean_relative_l2"] <= d["max_relative_l2"] < 2.0
    assert drift[480]["mean_relative_l2"] < drift[0]["mean_relative_l2"]


def test_avatar_session_matches_offline_skips_vae_encode_and_loops(sync, inputs, offline, avatar, monkeypatch):
    import engine.models.vae as vae_module
    from engine.pipeline.frames import pingpong_index

    encodes = []
    real_encode = vae_module.vae_encode
    monkeypatch.setattr(vae_module, "vae_encode", lambda *a, **k: encodes.append(1) or real_encode(*a, **k))
    _, _, speech = inputs
    got: list = []
    from engine.stream import StreamConfig, StreamSession

    session = StreamSession(sync, avatar, StreamConfig(mode="utterance", realtime=False, sync=fast_settings()),
                            on_frame=got.append)  # callback delivery, from the worker thread
    session.push_audio(speech)
    session.end_of_speech()
    session.close(drain=True, timeout=300)
    assert not encodes
    assert session.stats["stage_seconds"].get("vae_encode", 0.0) < 0.05 * session.stats["stage_seconds"]["unet"]
    assert len(got) == len(offline) > 2 * SOURCE_FRAMES
    assert [f.source_index for f in got] == [pingpong_index(j, SOURCE_FRAMES) for j in range(len(got))]
    assert np.array_equal(np.stack([f.rgb for f in got]), offline)  # lossless frames, stored posteriors: exact


def test_visually_lossless_avatar_stays_within_its_stated_tolerance(sync, inputs, offline, tmp_path):
    """frames_crf=12: about 8x smaller at 1080p; frames are no longer exact. Stated tolerance against the
    offline run: PSNR >= 40 dB and mean |diff| <= 1 uint8 step (measured on these frames: see the print)."""
    from engine.stream import StreamConfig, StreamSession, prepare_avatar

    frames, landmarks, speech = inputs
    avatar = prepare_avatar(sync, frames, tmp_path / "crf12", face=_faces(landmarks), frames_crf=12)
    assert avatar.manifest.frames_crf == 12 and "crf 12" in avatar.manifest.frames_codec
    got: list = []
    session = StreamSession(sync, avatar, StreamConfig(mode="utterance", realtime=False, sync=fast_settings()),
                            on_frame=got.append)
    session.push_audio(speech, end_of_speech=True)
    session.close(drain=True, timeout=300)
    diff = np.abs(np.stack([f.rgb for f in got]).astype(np.int16) - offline)
    psnr = 10 * np.log10(255 ** 2 / np.mean(diff.astype(np.float64) ** 2))
    print(f"crf 12 avatar vs offline: max {diff.max()}, mean {diff.mean():.3f}, PSNR {psnr:.1f} dB")
    assert len(got) == len(offline) and diff.max() > 0  # lossy: not exact
    assert psnr >= 40 and diff.mean() <= 1.0
    with pytest.raises(InvalidInputError, match="avatar frames crf: expected None .*found 99"):
        prepare_avatar(sync, frames, tmp_path / "bad", face=_faces(landmarks), frames_crf=99)
    assert not (tmp_path / "bad").exists()


def test_avatar_for_another_model_or_damaged_is_refused(sync, avatar, tmp_path):
    import copy

    from engine.models.vae import build_vae, tiny_vae_config
    from engine.stream import Avatar

    other = copy.copy(sync)
    other.core = copy.copy(sync.core)
    other.core.resolution = 512
    with pytest.raises(InvalidInputError, match="avatar resolution: expected 512 .*found 256"):
        _session(other, avatar)
    other.core.resolution, other.core.vae = 256, build_vae(tiny_vae_config())
    with pytest.raises(InvalidInputError, match="avatar VAE fingerprint"):
        _session(other, avatar)

    damaged = tmp_path / "damaged"
    shutil.copytree(avatar.path, damaged)
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(InvalidInputError, match="format version: expected 2, found 99"):
        Avatar(damaged)
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    for name in ("posterior.bin", "frames.mkv", "faces.mkv"):
        shutil.copy(avatar.path / name, damaged / name)
        with open(damaged / name, "r+b") as f:
            f.truncate(os.path.getsize(damaged / name) - 4)
        with pytest.raises(InvalidInputError, match=f"{name}: expected {os.path.getsize(avatar.path / name)} bytes"):
            Avatar(damaged)
        shutil.copy(avatar.path / name, damaged / name)
    np.save(damaged / "matrices.npy", np.zeros((3, 2, 3)))
    with pytest.raises(InvalidInputError,
                       match=r"matrices.npy: expected float32 \[10, 2, 3\], found float64 \[3, 2, 3\]"):
        Avatar(damaged)
    with pytest.raises(InvalidInputError, match="manifest.json"):
        Avatar(tmp_path / "missing")


def test_avatar_of_the_old_raw_format_gets_a_clear_error(tmp_path):
    """Format 1 (raw frames.raw / faces.raw / posterior.raw) is refused with what to do, not a crash."""
    from engine.stream import Avatar

    old = write_format1_avatar(tmp_path / "old")
    with pytest.raises(InvalidInputError, match=r"format version: expected 2, found 1 \(an avatar from an older "
                                                r"engine; prepare it again with `engine avatar prepare`\)"):
        Avatar(old)


def test_avatar_frames_changed_on_disk_fail_typed_not_silently(sync, inputs, avatar, tmp_path):
    """Same size, different bytes inside one stored frame: the session fails with MediaDecodeError."""
    from engine.errors import MediaDecodeError
    from engine.stream import Avatar

    damaged = tmp_path / "flipped"
    shutil.copytree(avatar.path, damaged)
    data = bytearray((damaged / "frames.mkv").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    (damaged / "frames.mkv").write_bytes(bytes(data))
    session = _session(sync, Avatar(damaged), mode="utterance")
    session.push_audio(inputs[2])
    session.end_of_speech()
    session.finish()
    with pytest.raises(MediaDecodeError, match="frames.mkv: expected frame .* as prepared"):
        list(session.frames(timeout=300))
    session.close()


def test_full_speech_queue_is_refused_at_once(sync, inputs):
    frames, landmarks, _ = inputs
    session = _session(sync, frames, landmarks, mode="utterance", max_queued_seconds=1.0)
    try:
        session.push_audio(np.zeros(12_000, np.float32))
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError, match="at most 1 s waiting"):
            session.push_audio(np.zeros(6_400, np.float32))
        assert time.perf_counter() - t0 < 0.5
        session.push_audio(np.zeros(4_000, np.float32))  # what still fits is accepted
    finally:
        session.close()


@pytest.mark.parametrize("chunk, match", [
    (np.zeros(640, np.float64), "int16 or float32"),
    (np.zeros((640, 2), np.int16), r"mono samples \[n\]"),
    (np.array([0.0, np.nan], np.float32), "finite"),
    (np.full(10, 3.0, np.float32), r"in \[-1, 1\]"),
    (np.zeros(640, np.int32), "int16 or float32"),
])
def test_bad_audio_chunks_are_refused_with_expected_and_found(sync, inputs, chunk, match):
    frames, landmarks, _ = inputs
    with _session(sync, frames, landmarks) as session:
        with pytest.raises(InvalidInputError, match=match):
            session.push_audio(chunk)


def test_boundary_checks_rate_order_whole_frames_and_sources(sync, inputs):
    frames, landmarks, _ = inputs
    with _session(sync, frames, landmarks, whole_frame_chunks=True) as session:
        with pytest.raises(InvalidInputError, match="sample rate: expected 16000, found 8000"):
            session.push_audio(np.zeros(640, np.int16), sample_rate=8000)
        with pytest.raises(InvalidInputError, match="multiple of 640 samples.*found 100"):
            session.push_audio(np.zeros(100, np.int16))
        session.push_audio(np.zeros(640, np.int16), offset=0)
        with pytest.raises(InvalidInputError, match="offset: expected 640 .*found 0"):
            session.push_audio(np.zeros(640, np.int16), offset=0)
    with pytest.raises(InvalidInputError, match=r"frame 0: expected (a )?uint8 (RGB )?array \[H,W,3\]"):
        _session(sync, iter([np.zeros((4, 4), np.uint8)]), landmarks)
    with pytest.raises(InvalidInputError, match="stream chunk_frames"):
        _session(sync, frames, landmarks, chunk_frames=10)
    with pytest.raises(InvalidInputError, match="expected at least 320 samples"):
        with _session(sync, frames, landmarks) as session:
            session.push_audio(np.zeros(100, np.float32))
            session.end_of_speech()


def test_close_mid_utterance_cancels_within_a_chunk(sync, inputs):
    frames, landmarks, speech = inputs
    session = _session(sync, frames, landmarks, mode="live", chunk_frames=8, lookahead_ms=0)
    session.push_audio(np.tile(speech, 4))  # 3.6 s: many chunks queued
    session.end_of_speech()
    assert session.next_frame(timeout=300) is not None
    chunk_s = max(session.chunk_seconds)
    t0 = time.perf_counter()
    session.close()
    took = time.perf_counter() - t0
    assert not session.worker_alive
    assert not any(t.name.startswith("lipsync-stream") and t.is_alive() for t in threading.enumerate())
    assert sync.core.engine.queued_chunks(session.renderer.job) == 0  # its queued chunks left the engine
    assert took < 1.5 * chunk_s + 1.0, (took, chunk_s)
    assert session.stats["frames_emitted"] < 90  # the other chunks were never made
    with pytest.raises(InvalidInputError, match="closed"):
        session.push_audio(np.zeros(640, np.int16))


def test_idle_frames_flow_at_25_fps_without_speech(sync, inputs):
    frames, landmarks, _ = inputs
    with _session(sync, frames, landmarks, realtime=True) as session:
        t0 = time.perf_counter()
        got = []
        while (wall := time.perf_counter() - t0) < 1.2:
            frame = session.next_frame(timeout=1.0)
            assert frame is not None
            got.append(frame)
    assert got and all(f.kind == "idle" and f.audio_time_s is None for f in got)
    assert [f.index for f in got] == list(range(len(got)))
    assert [f.source_index for f in got] == [j % SOURCE_FRAMES if (j // SOURCE_FRAMES) % 2 == 0
                                             else SOURCE_FRAMES - 1 - j % SOURCE_FRAMES for j in range(len(got))]
    assert np.array_equal(got[0].rgb, frames[0])  # passthrough
    assert len(got) <= 25 * wall + 2  # never ahead of the 25 fps timeline
    assert len(got) >= 0.5 * 25 * (wall - 0.5)  # and keeps up on an idle machine (loose: shared CI cores)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_long_live_stream_keeps_memory_flat(sync):
    """150 s of speech pushed live in 100 ms pieces, across 30 s segment trims; faceless frames keep it fast."""
    from engine.stream import StreamConfig, StreamSession

    frames = np.zeros((SOURCE_FRAMES, 64, 64, 3), np.uint8)
    landmarks = np.full((SOURCE_FRAMES, 3, 2), np.nan, np.float32)  # no face: the U-Net is skipped
    rss: list[int] = []
    count = [0]

    def on_frame(frame) -> None:
        count[0] += 1
        if count[0] % 250 == 0:
            rss.append(_rss_bytes())

    session = StreamSession(sync, frames, StreamConfig(mode="live", realtime=False, max_queued_seconds=10,
                                                       sync=fast_settings()),
                            on_frame=on_frame, face=_faces(landmarks))
    rng = np.random.default_rng(0)
    for _ in range(1500):
        piece = rng.integers(-3000, 3000, SAMPLE_RATE // 10).astype(np.int16)
        while True:
            try:
                session.push_audio(piece)
                break
            except QueueFullError:  # back-pressure: the bounded queue refuses, the producer waits
                time.sleep(0.05)
    session.end_of_speech()
    session.close(drain=True, timeout=600)
    assert count[0] == 3750  # 150 s of speech at 25 fps (length "audio")
    settled = rss[len(rss) // 4:]
    assert max(settled) - min(settled) < 40 << 20, [r >> 20 for r in rss]


def test_cli_avatar_prepare_writes_a_loadable_avatar(golden, tmp_path, capsys, monkeypatch):
    import sys

    from engine.cli import main
    from engine.media import VideoWriter
    from engine.stream import Avatar

    frames, landmarks, _ = demo1_inputs(golden, 6)
    video = tmp_path / "face.mp4"
    with VideoWriter(video, frames.shape[2], frames.shape[1]) as writer:
        for frame in frames:
            writer.write(frame)
    track = tmp_path / "track.json"
    track.write_text(json.dumps({"landmarks3": landmarks.tolist()}))
    out = tmp_path / "avatar"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on terminals only
    assert main(["avatar", "prepare", "--video", str(video), "--out", str(out), "--model", "tiny-random",
                 "--device", "cpu", "--face", str(track)]) == 0
    captured = capsys.readouterr()
    assert "6 frames 320x320" in captured.out and f"face source trackfile:{track}" in captured.out
    assert "avatar: 100%" in captured.err and "6/6 [" in captured.err  # the progress bar, finished
    avatar = Avatar(out)
    assert avatar.manifest.model == "tiny-random" and avatar.manifest.face_source == f"trackfile:{track}"
    assert avatar.manifest.face_source_requested == str(track)
    assert avatar.manifest.source["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert len(avatar) == 6 and np.isfinite(avatar.posterior).all()
    assert main(["avatar", "prepare", "--video", str(video), "--out", str(out), "--model", "tiny-random",
                 "--device", "cpu", "--face", str(track)]) == 2  # refuses to overwrite: InvalidInputError


def test_output_timeline_gives_each_chunk_its_real_time_deadline():
    """`next_due` (a chunk's deadline) runs 1/25 s per emitted frame ahead, and restarts from now after a stall."""
    from engine.stream.output import FrameOutput

    got = []
    output = FrameOutput(4, got.append, lambda: False)
    frame = np.zeros((2, 2, 3), np.uint8)
    t0 = output.next_due
    for _ in range(10):  # a burst: a chunk's frames come out at once
        output.emit(frame, "speech", 0, len(got), True, 0)
    assert output.next_due == pytest.approx(t0 + 10 / 25, abs=0.02)  # the consumer shows them at 25 fps
    assert [f.index for f in got] == list(range(10)) and not output.idle_due()
    output.next_due = time.time() - 5  # rendering fell far behind the wall clock
    output.emit(frame, "idle", None, None, False, 0)
    assert output.next_due == pytest.approx(time.time(), abs=0.05)  # the timeline restarts from now
    assert output.idle_wait(realtime=False) == 0.5 and 0.005 <= output.idle_wait(realtime=True) <= 0.5


def test_realtime_timeline_holds_the_last_frame_while_the_first_chunk_is_made(sync, inputs):
    """No stall: while an utterance's first chunk is made (features, faces, device work: seconds on this CPU) the
    session repeats the last frame at 25 fps, and the utterance then continues the source where it paused."""
    from engine.pipeline.frames import pingpong_index

    frames, landmarks, speech = inputs
    session = _session(sync, frames, landmarks, mode="utterance", realtime=True)
    got = [session.next_frame(timeout=60) for _ in range(5)]  # idle frames flowing
    session.push_audio(speech, end_of_speech=True)
    while sum(f.kind == "speech" for f in got) < SPEECH_FRAMES:
        got.append(session.next_frame(timeout=300))
    session.close()
    stats = session.stats
    first = next(k for k, f in enumerate(got) if f.kind == "speech")
    idle = [f for f in got[:first] if not f.held]
    held = got[len(idle):first]
    assert held and all(f.held and f.kind == "idle" for f in held)  # passthrough idle frames, then held ones
    assert all(f.rgb is idle[-1].rgb and f.source_index == idle[-1].source_index for f in held)
    assert stats["held_frames"] == len(held)
    speech_frames = got[first:]
    assert [f.source_index for f in speech_frames] == [pingpong_index(len(idle) + k, SOURCE_FRAMES)
                                                       for k in range(SPEECH_FRAMES)]  # resumes where it paused
    walls = [f.wall_time for f in got[:first]]
    span = speech_frames[0].wall_time - held[0].wall_time
    assert max(np.diff(walls)) < 0.5 * stats["chunk_compute_s_max"]  # the making of the chunk never stalled it
    assert len(held) >= 0.5 * 25 * (span - 0.5)  # and held frames kept up (loose: shared CI cores)
    # the first chunk has no fixed slot (held frames bridge it); the second follows it, so it is late or dropped
    # on a machine where making it takes longer than the first one's 0.64 s of frames
    assert stats["chunks"] == 2 and stats["late_chunks"] + stats["dropped_chunks"] <= 1
    assert not any(f.dropped for f in speech_frames[:16])
    assert sum(f.dropped for f in speech_frames) == (SPEECH_FRAMES - 16) * stats["dropped_chunks"]


def test_a_chunk_past_its_deadline_is_dropped_and_later_chunks_are_unaffected(sync, inputs, monkeypatch):
    """The device is held busy until the first chunk's deadline (its slot + one chunk) has passed: the core drops
    it unrun, its slots show the source frames (flagged), and the next chunk is made from the generator as it was
    (nothing was drawn for the dropped one)."""
    from engine.audio.features import audio_features
    from engine.audio import frame_windows
    from engine.pipeline.core import StageTimer
    from engine.pipeline.source import SourceCursor

    frames, landmarks, speech = inputs
    core = sync.core
    release, deadlines = threading.Event(), []
    real_submit = core.submit_chunk

    def submit(*args, deadline=None, **kwargs):
        if not deadlines:  # the device thread waits on `release` before it can start the first chunk
            core.engine.call_async(release.wait, 60)
        deadlines.append(deadline)
        return real_submit(*args, deadline=deadline, **kwargs)

    monkeypatch.setattr(core, "submit_chunk", submit)
    session = _session(sync, frames, landmarks, mode="utterance", realtime=True)
    session.push_audio(speech, end_of_speech=True)
    t0 = time.monotonic()
    while len(deadlines) < 2:  # both chunks queued (two in flight at most)
        assert time.monotonic() - t0 < 60 and session.worker_alive
        time.sleep(0.01)
    time.sleep(max(0.0, deadlines[0] + 0.05 - time.monotonic()))
    assert time.monotonic() < deadlines[1]  # the second chunk's slot is 16 frames later
    release.set()
    got = []
    while sum(f.kind == "speech" for f in got) < SPEECH_FRAMES:
        got.append(session.next_frame(timeout=300))
    session.close()
    out = [f for f in got if f.kind == "speech"]
    assert all(f.dropped for f in out[:16]) and not any(f.dropped for f in out[16:])
    assert all(np.array_equal(f.rgb, frames[f.source_index]) for f in out[:16])  # passed through unchanged
    assert session.stats["dropped_chunks"] == 1 and session.stats["chunks"] == 2

    start = sum(1 for f in got if f.kind == "idle" and not f.held)  # the cursor position the utterance began at
    aligner = core.new_aligner()
    cursor = SourceCursor(frames, _faces(landmarks), aligner)
    cursor.take(start + 16)
    generator, noise = core.start_noise(fast_settings().seed)  # nothing drawn for the dropped chunk
    windows = frame_windows(audio_features(speech, core.audio_encoder), 16, 24)
    want = real_submit(cursor.take(8), range(16, 24), windows, fast_settings(), noise, generator, aligner,
                       StageTimer(), emit=SPEECH_FRAMES - 16).result()
    cursor.close()
    assert np.array_equal(np.stack([f.rgb for f in out[16:]]), np.stack([f.rgb for f in want]))


def test_avatar_posteriors_are_computed_on_the_engine_core_thread(sync, inputs, tmp_path, monkeypatch):
    """Avatar preparation calls the VAE through the core (`core.vae_posterior`), never from its own thread."""
    from engine.stream import prepare_avatar

    frames, landmarks, _ = inputs
    runner = sync.core.runners.vae
    real, threads = runner.posterior, []
    monkeypatch.setattr(runner, "posterior", lambda pixels: threads.append(threading.current_thread().name)
                        or real(pixels))
    prepare_avatar(sync, frames[:2], tmp_path / "avatar", face=_faces(landmarks[:2]))
    assert threads == ["lipsync-device"] * 2  # masked faces, then reference faces
