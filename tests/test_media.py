"""engine.media on real clips and files written by PyAV encoders: probe, decode, resample, encode, round-trip."""

from __future__ import annotations

import math
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import InvalidInputError
from engine.media import (MediaLimits, VideoWriter, count_source_frames, cut_clip, estimate_frame_count,
                          iter_video_frames, load_audio, load_pcm16, probe, write_wav)

SR = 16_000
LEVEL0, LEVEL_STEP, LEVELS = 16, 18, 12  # frame index encoded as flat colours: R = i % 12, G = i // 12


# ----------------------------------------------------------------------------- helpers
def index_rgb(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = LEVEL0 + LEVEL_STEP * (i % LEVELS)
    rgb[..., 1] = LEVEL0 + LEVEL_STEP * (i // LEVELS)
    rgb[..., 2] = 128
    return rgb


def read_index(rgb: np.ndarray) -> int:
    r, g = rgb[..., 0].mean(), rgb[..., 1].mean()
    return round((r - LEVEL0) / LEVEL_STEP) + LEVELS * round((g - LEVEL0) / LEVEL_STEP)


def write_pts_clip(path: Path, times_s: list[float], *, time_base: Fraction = Fraction(1, 1000)) -> None:
    """H.264 clip whose frame i (showing index i) has pts times_s[i]: any constant or variable rate."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=int(1 / time_base), options={"crf": "10"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = time_base
        for i, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(index_rgb(i), format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_audio_file(path: Path, x: np.ndarray, sr: int, codec: str, layout: str, fmt: str) -> None:
    """Encode x [channels, n] (float or int16) with a PyAV encoder, e.g. pcm_s16le, pcm_f32le, mp3, aac."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr)
        s.layout, s.format = layout, fmt
        block = s.codec_context.frame_size or 1024
        for i in range(0, x.shape[1], block):
            part = x[:, i:i + block]
            arr = part if fmt.endswith("p") else part.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
            frame.sample_rate, frame.pts = sr, i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def wav_int16(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * sr / x.size)


# ----------------------------------------------------------------------------- probe
@pytest.mark.parametrize("name", ["demo1_video.mp4", "demo2_video.mp4"])
def test_probe_demo_clip(media, name):
    info = probe(media / name, require_video=True, require_audio=True)
    v, a = info.video, info.audio
    assert v.codec == "hevc" and a.codec == "aac"
    assert (v.width, v.height) == (v.coded_width, v.coded_height) and v.height > v.width  # portrait, no rotation
    assert v.rate == 25 and v.frames_declared
    # three independent counts agree: container frame count, demuxed packets, duration * fps
    assert v.frames == count_source_frames(media / name) == estimate_frame_count(v, 25)
    assert abs(info.duration_s - v.frames / 25) < 0.05 and a.sample_rate > 0 and a.channels >= 1


def test_probe_wav(media):
    info = probe(media / "demo1_audio.wav", require_audio=True)
    assert info.video is None and info.streams == ("audio",)
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("pcm_s16le", SR, 1)
    assert info.audio.duration_s * SR == wav_int16(media / "demo1_audio.wav").size


# ----------------------------------------------------------------------------- video decode
def test_first_frames_match_golden_decode(media, golden):
    """The golden e2e inputs are the first 32 frames decoded by PyAV rgb24, cropped: ours must be identical."""
    frames = list(iter_video_frames(media / "demo1_video.mp4", max_frames=32))
    assert [f.index for f in frames] == list(range(32))
    assert [f.time_s for f in frames] == [k / 25 for k in range(32)]
    assert frames[0].rgb.dtype == np.uint8 and frames[0].rgb.shape == (1920, 1080, 3)
    expected = np.load(golden / "e2e_demo1" / "inputs_frames.npz")["frames"]  # [32,320,320,3]
    got = np.stack([f.rgb[603:923, 440:760] for f in frames])
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("src_fps", [Fraction(24000, 1001), 25, Fraction(30000, 1001), 30, 60])
def test_constant_rate_resampled_by_pts(tmp_path, src_fps):
    """Output frame k shows the latest source frame with pts <= k/25 (R6)."""
    n = math.ceil(src_fps * 1.2)
    times = [float(i / Fraction(src_fps)) for i in range(n)]
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 64, 48, fps=src_fps, crf=10, preset="ultrafast") as w:
        for i in range(n):
            w.write(index_rgb(i))
    frames = list(iter_video_frames(path, fps=25))
    end = Fraction(n) / Fraction(src_fps)
    assert len(frames) == math.ceil(end * 25)
    for f in frames:
        expected = max(i for i, t in enumerate(times) if Fraction(t).limit_denominator(10**6) <= Fraction(f.index, 25))
        assert read_index(f.rgb) == expected, f.index
    assert probe(path).video.frames == n


def test_b_frames_keep_order(tmp_path):
    """x264 'medium' reorders frames (B-frames) and the MP4 gets an edit list: decode order must not leak out."""
    path = tmp_path / "bframes.mp4"
    with VideoWriter(path, 64, 48, crf=10, preset="medium") as w:
        for i in range(30):
            w.write(index_rgb(i))
    assert [read_index(f.rgb) for f in iter_video_frames(path)] == list(range(30))


def test_variable_rate_resampled_by_pts(tmp_path):
    times = [0.0, 0.01, 0.05, 0.13, 0.14, 0.15, 0.31, 0.52, 0.53, 0.60]  # VFR with gaps and bursts
    path = tmp_path / "vfr.mp4"
    write_pts_clip(path, times)
    frames = list(iter_video_frames(path, fps=25))
    assert [f.index for f in frames] == list(range(len(frames)))
    for f in frames:
        t = f.index / 25
        assert read_index(f.rgb) == max(i for i, s in enumerate(times) if s <= t + 1e-9), f.index


def test_display_rotation_applied(tmp_path):
    path = tmp_path / "rot.mp4"
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:8, :8] = 255  # top-left marker
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)  # counter-clockwise, like a phone held upright
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = 0
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    info = probe(path)
    assert (info.video.rotation, info.video.width, info.video.height) == (90, 32, 64)
    out = next(iter_video_frames(path)).rgb
    assert out.shape == (64, 32, 3)
    assert out[-8:, :8].mean() > 200 and out[:8, :8].mean() < 50  # top-left went to bottom-left
    raw = next(iter_video_frames(path, autorotate=False)).rgb
    assert raw.shape == (32, 64, 3) and raw[:8, :8].mean() > 200


# ----------------------------------------------------------------------------- audio
def test_wav_16k_mono_is_bit_exact(media, golden):
    samples = load_audio(media / "demo1_audio.wav")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.array_equal(samples, wav_int16(media / "demo1_audio.wav").astype(np.float32) / 32768)
    assert np.array_equal(load_pcm16(media / "demo1_audio.wav"), wav_int16(media / "demo1_audio.wav"))
    from safetensors.numpy import load_file

    golden_audio = load_file(golden / "e2e_demo1" / "inputs.safetensors")["audio_16k"]
    assert np.array_equal(samples[: golden_audio.size], golden_audio)


def test_audio_track_of_a_video(media):
    info = probe(media / "demo1_video.mp4")
    samples = load_audio(media / "demo1_video.mp4")
    aac_frame_at_16k = 1024 * SR / info.audio.sample_rate
    assert abs(samples.size - info.audio.duration_s * SR) <= aac_frame_at_16k
    assert 0.001 < float(np.sqrt(np.mean(samples**2))) < 0.5  # speech, not silence or clipping


AUDIO_CASES = [  # (sample rate, layout, channels, codec, sample format, extension, length tolerance)
    (8000, "mono", 1, "pcm_s16le", "s16", "wav", 1),
    (48000, "stereo", 2, "pcm_s16le", "s16", "wav", 1),
    (48000, "5.1", 6, "pcm_s16le", "s16", "wav", 1),
    (44100, "stereo", 2, "pcm_f32le", "flt", "wav", 1),
    (44100, "stereo", 2, "mp3", "fltp", "mp3", 1),
    (48000, "stereo", 2, "aac", "fltp", "m4a", 16),  # MP4 states durations in 1 ms units by default
]


@pytest.mark.parametrize("sr,layout,nch,codec,fmt,ext,tol", AUDIO_CASES)
def test_resampled_to_16k_mono_with_expected_length(tmp_path, sr, layout, nch, codec, fmt, ext, tol):
    n = 2 * sr + 123
    t = np.arange(n) / sr
    x = np.stack([0.25 * np.sin(2 * np.pi * 440 * t)] * nch).astype(np.float32)
    if fmt == "s16":
        x = np.round(x * 32767).astype(np.int16)
    path = tmp_path / f"tone.{ext}"
    write_audio_file(path, x, sr, codec, layout, fmt)
    y = load_audio(path)
    assert y.dtype == np.float32
    assert abs(y.size - n * SR / sr) <= tol
    assert abs(dominant_hz(y[SR // 4: -SR // 4], SR) - 440) < 3
    assert float(np.abs(y).max()) > 0.05  # the downmix kept the tone


# ----------------------------------------------------------------------------- writing
def test_round_trip_h264_aac(media, golden, tmp_path):
    frames = np.load(golden / "e2e_demo1" / "inputs_frames.npz")["frames"][:20]  # real face crops [20,320,320,3]
    audio = load_audio(media / "demo1_audio.wav")[: 20 * 640]  # 0.8 s
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 320, 320, audio=audio, crf=18, preset="veryfast") as w:
        for f in frames:
            w.write(f)
    info = probe(out, require_video=True, require_audio=True)
    assert (info.video.codec, info.audio.codec) == ("h264", "aac")
    assert info.video.pix_fmt == "yuv420p" and info.video.frames == 20 and info.video.rate == 25
    assert info.video.duration_s == pytest.approx(0.8) and info.audio.duration_s == pytest.approx(0.8)
    decoded = [f.rgb for f in iter_video_frames(out)]
    assert len(decoded) == 20
    quality = [psnr(a, b) for a, b in zip(decoded, frames)]
    assert min(quality) > 33, quality
    back = load_audio(out)
    assert back.size == audio.size  # priming hidden by the edit list, padding trimmed by the declared duration
    assert np.corrcoef(back, audio)[0, 1] > 0.9


def test_odd_size_is_padded_and_scaling(tmp_path):
    yy, xx = np.mgrid[0:17, 0:33]
    rgb = np.stack([xx * 7, yy * 13, 255 - xx * 5], axis=-1).astype(np.uint8)  # smooth, odd-sized
    odd = tmp_path / "odd.mp4"
    with VideoWriter(odd, 33, 17, crf=0, preset="ultrafast") as w:
        assert w.encoded_size == (34, 18)
        w.write(rgb)
    out = next(iter_video_frames(odd)).rgb
    assert out.shape == (18, 34, 3)
    assert psnr(out[:17, :33], rgb) > 35  # crf 0 is lossless in YUV; the loss is RGB<->YUV 4:2:0 only
    assert np.abs(out[:, 33].astype(int) - out[:, 32]).max() <= 3  # padding repeats the last column
    scaled = tmp_path / "scaled.mp4"
    with VideoWriter(scaled, 33, 17, size=(64, 32), preset="ultrafast") as w:
        w.write(rgb)
        w.write(rgb)
    assert (probe(scaled).video.width, probe(scaled).video.height, probe(scaled).video.frames) == (64, 32, 2)


def test_streamed_audio_and_long_audio_kept(tmp_path):
    out = tmp_path / "stream.mp4"
    tone = (0.2 * np.sin(2 * np.pi * 300 * np.arange(3 * 8000) / SR)).astype(np.float32)  # 1.5 s
    with VideoWriter(out, 32, 32, with_audio=True, preset="ultrafast") as w:
        for i in range(10):  # 0.4 s of video
            w.write(index_rgb(i, 32, 32))
            w.write_audio(tone[i * 2400:(i + 1) * 2400])
    info = probe(out)
    assert info.video.frames == 10 and info.audio.duration_s == pytest.approx(1.5)  # no -shortest
    assert load_audio(out).size == tone.size


def test_write_wav_round_trip(media, tmp_path):
    samples = load_audio(media / "demo1_audio.wav")[:8000]
    path = write_wav(tmp_path / "x.wav", samples)
    assert np.array_equal(load_audio(path), samples)
    clipped = load_audio(write_wav(tmp_path / "y.wav", np.array([2.0, -2.0, 0.5], np.float32)))
    assert clipped.tolist() == [32767 / 32768, -1.0, 0.5]


def test_cut_clip(media, tmp_path):
    out = tmp_path / "cut.mp4"
    info = cut_clip(media / "demo1_video.mp4", out, seconds=0.4, size=(270, 480))
    assert (info.video.codec, info.audio.codec, info.video.frames) == ("h264", "aac", 10)
    assert (info.video.width, info.video.height) == (270, 480)
    assert load_audio(out).size == 0.4 * SR
    assert not list(tmp_path.glob(".*partial"))


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="crf"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, crf=60)
    with pytest.raises(InvalidInputError, match="preset"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, preset="fastest")
    with pytest.raises(InvalidInputError, match="output directory"):
        VideoWriter(tmp_path / "missing" / "a.mp4", 64, 48)
    with pytest.raises(InvalidInputError, match="finite"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, audio=np.array([0.0, np.nan], np.float32))
    with VideoWriter(tmp_path / "a.mp4", 64, 48, preset="ultrafast") as w:
        with pytest.raises(InvalidInputError, match=r"expected \(48, 64, 3\)"):
            w.write(np.zeros((64, 48, 3), np.uint8))
        with pytest.raises(InvalidInputError, match="uint8"):
            w.write(np.zeros((48, 64, 3), np.float32))
        w.write(np.zeros((48, 64, 3), np.uint8))
    assert probe(tmp_path / "a.mp4").video.frames == 1
    assert not list(tmp_path.glob(".*partial"))


def test_limits_are_configurable(media):
    path = media / "demo1_video.mp4"
    with pytest.raises(InvalidInputError, match="max_height"):
        probe(path, limits=MediaLimits(max_height=1080))
    with pytest.raises(InvalidInputError, match="max_duration_s"):
        probe(path, limits=MediaLimits(max_duration_s=5))
    with pytest.raises(InvalidInputError, match="max_width"):
        next(iter_video_frames(path, limits=MediaLimits(max_width=720)))
    with pytest.raises(InvalidInputError):
        MediaLimits(max_fps=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo1_video.mp4", "demo2_video.mp4"])
def test_full_decode_matches_probe(media, name):
    """Every frame of the real clips decodes (strict mode) and the count equals the probed one (~6-12 s each)."""
    info = probe(media / name)
    frames = 0
    for f in iter_video_frames(media / name):
        assert f.index == frames and f.rgb.shape == (info.video.height, info.video.width, 3)
        frames += 1
    assert frames == info.video.frames == estimate_frame_count(info.video)


def test_cut_clip_from_the_middle(tmp_path):
    src = tmp_path / "src.mp4"
    with VideoWriter(src, 64, 48, crf=10, preset="ultrafast") as w:  # 2 s, frame i shows index i
        for i in range(50):
            w.write(index_rgb(i))
    info = cut_clip(src, tmp_path / "mid.mp4", seconds=0.4, start=0.6)
    assert info.audio is None and info.video.frames == 10
    assert [read_index(f.rgb) for f in iter_video_frames(tmp_path / "mid.mp4")] == list(range(15, 25))
    late = list(iter_video_frames(src, start_s=1.5))  # first index: ceil(1.5 * 25) = 38
    assert [f.index for f in late] == list(range(38, 50)) and read_index(late[0].rgb) == 38


def test_same_frames_encode_to_the_same_bytes(tmp_path):
    """x264's threaded lookahead made two encodes of one clip differ (writer.X264_DETERMINISTIC)."""
    import hashlib

    from engine.media import VideoWriter

    x = np.linspace(0, 255, 352)[None, :, None]
    y = np.linspace(0, 255, 240)[:, None, None]
    frames = [np.broadcast_to(((x + 0.5 * y + 3 * i + np.arange(3) * 40) % 256).astype(np.uint8), (240, 352, 3))
              for i in range(20)]
    digests = set()
    for k in range(3):
        path = tmp_path / f"clip{k}.mp4"
        with VideoWriter(path, 352, 240, fps=25, crf=18) as writer:
            for frame in frames:
                writer.write(np.ascontiguousarray(frame))
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
