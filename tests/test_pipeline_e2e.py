"""The product end to end on a real clip: tiny random weights, the offline face source, real PyAV media."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

SECONDS = 0.6  # 15 source frames; 0.6 s of speech = 15 frames (official rule: L = 17, chunks of 16 + 1, ping-pong)
SPEECH_FRAMES = 15
FAST = dict(steps=1, guidance=1.0, deepcache=0, seed=7)  # CFG and DeepCache are covered by the golden e2e test


@pytest.fixture(scope="module")
def clip(media, tmp_path_factory):
    """demo1 cut to 1 s (H.264 + AAC) and its speech as a 16 kHz wav."""
    from engine.media import cut_clip, load_audio, write_wav

    root = tmp_path_factory.mktemp("clip")
    video = root / "face clip.mp4"  # a space in the name on purpose (R5)
    cut_clip(media / "demo1_video.mp4", video, seconds=SECONDS, size=(540, 960))
    speech = load_audio(media / "demo1_audio.wav")[: int(SECONDS * 16000)]
    wav = root / "speech.wav"
    write_wav(wav, speech, 16000)
    return video, wav, speech


@pytest.fixture(scope="module")
def sync():
    from engine.pipeline.sdk import LipSync

    try:
        return LipSync.from_pretrained("tiny-random", device="cpu", face="mediapipe")
    except Exception as exc:  # noqa: BLE001
        if "download" in str(exc).lower() or "network" in str(exc).lower():
            pytest.skip(f"offline face models unavailable: {exc}")
        raise


@pytest.fixture(scope="module")
def source_frames(clip):
    from engine.media import iter_video_frames

    return np.stack([f.rgb for f in iter_video_frames(clip[0])])


@pytest.fixture(scope="module")
def landmarks(sync, source_frames):
    """3-point landmarks found by the offline detector behind the tracker (what a run uses)."""
    from engine.pipeline.faces import make_landmark_source

    source = make_landmark_source("mediapipe", sync.models.resolution)
    points = [source.landmarks(i, f) for i, f in enumerate(source_frames)]
    assert all(p is not None for p in points), "the demo clip has a face in every frame"
    return np.stack(points).astype(np.float32)


def _official_frame_count(num_samples: int) -> int:
    mel_frames = num_samples // 160
    features = 1500 * (mel_frames // 3000) + (mel_frames % 3000) // 2
    return features // 2 + 2


def test_run_writes_valid_mp4_as_long_as_the_speech(sync, clip, tmp_path):
    from engine.media import load_audio, probe

    video, wav, speech = clip
    out = tmp_path / "out.mp4"
    result = sync(video, wav, out, **FAST)  # default length policy: the speech's length
    assert result.num_frames == SPEECH_FRAMES == -(-speech.size // 640) < _official_frame_count(speech.size) == 17
    assert result.length == "audio"
    info = probe(out)
    assert info.video.codec == "h264" and info.audio.codec == "aac"
    assert info.video.frames == SPEECH_FRAMES
    assert abs(info.video.duration_s - speech.size / 16000) < 1 / 25  # within one frame of the speech
    # the audio track is the whole input speech
    track = load_audio(out)
    assert abs(track.size - speech.size) <= 1024
    n = min(track.size, speech.size)
    corr = np.corrcoef(track[:n], speech[:n])[0, 1]
    assert corr > 0.95, corr
    assert result.no_face_ranges == []
    assert set(result.timings) >= {"decode", "face", "unet", "vae_encode", "vae_decode", "restore", "encode"}


def test_pixels_outside_the_face_region_are_the_input_pixels(sync, clip, source_frames, landmarks):
    from engine.face.align import FaceAligner
    from engine.pipeline.faces import LandmarkArraySource

    _, _, speech = clip
    result = sync(source_frames, speech, face=LandmarkArraySource(landmarks), **FAST)
    frames = result.frames
    aligner = FaceAligner(sync.models.resolution)
    matrices = aligner.compute_matrices(landmarks)  # the same smoothing sequence as the run
    w, h = aligner.crop_size
    t = len(source_frames)
    changed_somewhere = 0
    for j, frame in enumerate(frames):
        s = j if j < t else 2 * t - 1 - j  # ping-pong
        m = np.vstack([matrices[s], [0, 0, 1]])
        corners = np.linalg.inv(m) @ np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], dtype=np.float64)
        x0, y0 = np.floor(corners[:2].min(axis=1)).astype(int) - 2
        x1, y1 = np.ceil(corners[:2].max(axis=1)).astype(int) + 2
        outside = np.ones(frame.shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        np.testing.assert_array_equal(frame[outside], source_frames[s][outside], err_msg=f"frame {j}")
        changed_somewhere += int((frame != source_frames[s]).any())
    assert changed_somewhere == len(frames)


def test_frames_without_a_face_pass_through_and_are_reported(sync, clip, source_frames):
    _, _, speech = clip
    frames = source_frames.copy()
    frames[5:10] = 0  # a fade to black in the middle
    result = sync(frames, speech, **FAST)
    assert result.no_face_ranges == [(5, 10)]
    np.testing.assert_array_equal(result.frames[5:10], frames[5:10])
    assert (result.frames[10] != frames[10]).any()


def test_strict_faces_raises_with_the_ranges(sync, clip, source_frames):
    from engine.errors import NoFaceError

    _, _, speech = clip
    frames = source_frames.copy()
    frames[3:6] = 0
    with pytest.raises(NoFaceError, match=r"\(3, 6\)"):
        sync(frames, speech, strict_faces=True, **FAST)


def test_no_face_anywhere_fails_before_diffusion_and_writes_nothing(sync, clip, source_frames, tmp_path, monkeypatch):
    import engine.scheduler
    from engine.errors import NoFaceError

    _, _, speech = clip
    calls = []
    monkeypatch.setattr(engine.scheduler, "denoise", lambda *a, **k: calls.append(1))
    out = tmp_path / "never.mp4"
    with pytest.raises(NoFaceError):
        sync(np.zeros_like(source_frames), speech, out, **FAST)
    assert calls == [] and not out.exists() and list(tmp_path.iterdir()) == []


def test_same_seed_is_bit_identical_and_another_seed_differs(sync, clip, source_frames, landmarks):
    """Also the length policy: the official count only adds frames, the generated ones do not change."""
    from engine.pipeline.faces import LandmarkArraySource

    _, _, speech = clip
    runs = [sync(source_frames, speech, face=LandmarkArraySource(landmarks), length=length,
                 **{**FAST, "seed": seed}).frames for seed, length in ((7, "audio"), (7, "official"), (8, "audio"))]
    assert len(runs[0]) == SPEECH_FRAMES and len(runs[1]) == _official_frame_count(speech.size) == 17
    np.testing.assert_array_equal(runs[0], runs[1][:SPEECH_FRAMES])
    assert (runs[0] != runs[2]).any()


def test_cli_run_report_and_bad_input(clip, tmp_path):
    video, wav, _ = clip
    out, report = tmp_path / "cli.mp4", tmp_path / "report.json"
    cmd = [sys.executable, "-m", "engine", "run", "--model", "tiny-random", "--video", str(video), "--audio", str(wav),
           "--output", str(out), "--steps", "1", "--face", "mediapipe", "--device", "cpu", "--report", str(report),
           "--length", "official"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "17 frames" in done.stdout and out.is_file()
    data = json.loads(report.read_text())
    assert data["num_frames"] == 17 and data["config"]["steps"] == 1 and "unet" in data["timings"]

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    bad = subprocess.run([*cmd[:7], str(text), *cmd[8:11], str(tmp_path / "bad.mp4"), *cmd[12:]],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "InvalidInputError" in bad.stderr and not (tmp_path / "bad.mp4").exists()
    assert "Traceback" not in bad.stderr
