"""engine.media failure cases from RELIABILITY.md: R1 (corrupt), R3 (not media), R4 (limits), R5 (paths), R7/R8, R23."""

from __future__ import annotations

import gc
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidInputError, MediaDecodeError
from engine.media import VideoWriter, iter_video_frames, load_audio, probe
from test_media import index_rgb, write_audio_file, write_pts_clip

FAST_S = 1.0  # R3/R4: rejected in under a second


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def write_wav_header(path: Path, sample_rate: int, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())


def write_clip(path: Path, frames: int = 50, audio: bool = True, size: tuple[int, int] = (64, 48)) -> Path:
    """A small H.264 (+AAC) mp4 with the moov box at the front (faststart), textured so mdat dominates."""
    rng = np.random.default_rng(1)
    samples = (0.1 * rng.standard_normal(frames * 640)).astype(np.float32) if audio else None
    with VideoWriter(path, *size, audio=samples, preset="ultrafast") as w:
        for i in range(frames):
            w.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return path


def decode_all(path: Path, max_frames: int | None = None) -> None:
    """Probe, then decode video (and audio when present), as a job would."""
    info = probe(path)
    if info.video is not None:
        for _ in iter_video_frames(path, max_frames=max_frames):
            pass
    if info.audio is not None:
        load_audio(path)


def assert_fast(fn, error: type[Exception], match: str | None = None):
    start = time.perf_counter()
    with pytest.raises(error, match=match) as info:
        fn()
    assert time.perf_counter() - start < FAST_S
    return info


# ----------------------------------------------------------------------------- R3: not media
def _zero_stream_mp4(path: Path) -> None:
    mvhd = box(b"mvhd", bytes(4) + struct.pack(">IIII", 0, 0, 1000, 0) + struct.pack(">IH", 0x00010000, 0x0100)
               + bytes(10) + struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
               + bytes(24) + struct.pack(">I", 1))
    path.write_bytes(box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41") + box(b"moov", mvhd))


NOT_MEDIA = {
    "missing": lambda p: None,
    "empty": lambda p: p.write_bytes(b""),
    "text_renamed": lambda p: p.write_text("meeting notes\nnot a video at all\n" * 20),
    "hls_playlist": lambda p: p.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n"),
    "random_bytes": lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()),
    "zero_streams": _zero_stream_mp4,
    "directory": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("case", sorted(NOT_MEDIA))
def test_not_media_is_invalid_input_fast(tmp_path, case):
    path = tmp_path / "input.mp4"
    NOT_MEDIA[case](path)
    for call in (lambda: probe(path), lambda: next(iter_video_frames(path)), lambda: load_audio(path)):
        assert_fast(call, InvalidInputError, match="expected")


def test_wrong_stream_type_is_invalid_input_fast(media, tmp_path):
    wav = media / "demo1_audio.wav"
    assert_fast(lambda: probe(wav, require_video=True), InvalidInputError, "a video stream")
    assert_fast(lambda: next(iter_video_frames(wav)), InvalidInputError, "a video stream")
    silent = write_clip(tmp_path / "video only.mp4", frames=5, audio=False)
    assert_fast(lambda: probe(silent, require_audio=True), InvalidInputError, "an audio stream")
    assert_fast(lambda: load_audio(silent), InvalidInputError, "an audio stream")


# ----------------------------------------------------------------------------- R4: limits from metadata
def _y4m(path: Path, w: int, h: int, fps: str = "25:1") -> None:
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F{fps} Ip A1:1 C420\nFRAME\n".encode() + bytes([128]) * 6000)


def _patch_mp4_durations(path: Path, seconds: int) -> None:
    """Make every track declare `seconds`: sample deltas (stts) and durations (mdhd, mvhd, tkhd, elst; version 0)."""
    data = bytearray(path.read_bytes())
    scales = []
    at = data.find(b"mdhd")
    while at >= 0:  # version 0: flags(4) created(4) modified(4) timescale(4) duration(4)
        scales.append(struct.unpack(">I", data[at + 16: at + 20])[0])
        data[at + 20: at + 24] = struct.pack(">I", seconds * scales[-1])
        at = data.find(b"mdhd", at + 4)
    at = data.find(b"stts")
    for scale in scales:  # one stts per track, in track order
        count = struct.unpack(">I", data[at + 8: at + 12])[0]
        entries = [struct.unpack(">II", data[at + 12 + 8 * i: at + 20 + 8 * i]) for i in range(count)]
        delta = -(-seconds * scale // sum(n for n, _ in entries))
        for i, (n, _) in enumerate(entries):
            data[at + 12 + 8 * i: at + 20 + 8 * i] = struct.pack(">II", n, delta)
        at = data.find(b"stts", at + 4)
    movie_scale = struct.unpack(">I", data[data.find(b"mvhd") + 16: data.find(b"mvhd") + 20])[0]
    for kind, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"elst", 12)):  # the movie-timescale durations
        at = data.find(kind)
        while at >= 0:
            data[at + offset: at + offset + 4] = struct.pack(">I", seconds * movie_scale)
            at = data.find(kind, at + 4)
    path.write_bytes(bytes(data))


def test_declared_sizes_over_limits(tmp_path):
    _y4m(tmp_path / "big.y4m", 12000, 12000)
    assert_fast(lambda: probe(tmp_path / "big.y4m"), InvalidInputError, "max_width")
    _y4m(tmp_path / "huge.y4m", 16384, 16384)  # FFmpeg itself refuses these
    assert_fast(lambda: probe(tmp_path / "huge.y4m"), InvalidInputError)
    _y4m(tmp_path / "zero.y4m", 0, 0)
    assert_fast(lambda: probe(tmp_path / "zero.y4m"), InvalidInputError)
    _y4m(tmp_path / "ok.y4m", 16, 16)
    assert probe(tmp_path / "ok.y4m").video.width == 16  # the same format with sane metadata passes


def test_declared_frame_rate_and_duration_over_limits(tmp_path):
    fast = tmp_path / "1000fps.mp4"
    write_pts_clip(fast, [i / 1000 for i in range(20)])
    assert_fast(lambda: probe(fast), InvalidInputError, "max_fps")
    long = write_clip(tmp_path / "10h.mp4", frames=10)
    _patch_mp4_durations(long, 10 * 3600)
    assert_fast(lambda: probe(long), InvalidInputError, "max_duration_s")
    assert_fast(lambda: next(iter_video_frames(long)), InvalidInputError, "max_duration_s")


@pytest.mark.parametrize("rate", [1, 10_000_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = tmp_path / "rate.wav"
    write_wav_header(path, rate, np.zeros(1000, np.int16))
    assert_fast(lambda: load_audio(path), InvalidInputError, "sample rate")


# ----------------------------------------------------------------------------- R1: truncated / corrupt
@pytest.mark.parametrize("percent", [10, 50, 90])
def test_truncated_demo_mp4(media, tmp_path, percent):
    data = (media / "demo1_video.mp4").read_bytes()  # moov at the end: any cut loses it
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * percent // 100])
    assert_fast(lambda: probe(path), MediaDecodeError, "corrupt")


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_truncated_faststart_mp4_names_the_stream(tmp_path, percent):
    data = write_clip(tmp_path / "full.mp4").read_bytes()  # moov first, so cuts land in the samples
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * percent // 100])
    with pytest.raises(MediaDecodeError) as err:
        decode_all(path)
    if data.find(b"mdat") < len(data) * percent // 100:
        assert "stream #" in str(err.value)


def test_missing_moov(tmp_path):
    data = write_clip(tmp_path / "full.mp4").read_bytes()
    at = data.find(b"moov") - 4
    size = struct.unpack(">I", data[at:at + 4])[0]
    (tmp_path / "nomoov.mp4").write_bytes(data[:at] + data[at + size:])  # the index is gone, the samples remain
    assert_fast(lambda: probe(tmp_path / "nomoov.mp4"), MediaDecodeError)


def _flip(data: bytes, start: int, stop: int, count: int) -> bytes:
    out = bytearray(data)
    for pos in np.random.default_rng(7).integers(start, stop, count):
        out[pos] ^= 0xFF
    return bytes(out)


def test_flipped_bytes_hevc(media, tmp_path):
    data = (media / "demo1_video.mp4").read_bytes()
    path = tmp_path / "flipped.mp4"
    path.write_bytes(_flip(data, 64, len(data) // 10, 300))  # damage the first second of samples
    with pytest.raises(MediaDecodeError, match=r"stream #0 \(video, hevc\)"):
        decode_all(path, max_frames=30)


def test_flipped_bytes_h264(tmp_path):
    data = write_clip(tmp_path / "full.mp4", audio=False).read_bytes()
    mdat = data.find(b"mdat")
    path = tmp_path / "flipped.mp4"
    path.write_bytes(_flip(data, mdat + 8, len(data), 200))
    with pytest.raises(MediaDecodeError, match=r"stream #0 \(video, h264\)"):
        decode_all(path)


def test_truncated_wav_and_mp3(tmp_path):
    write_wav_header(tmp_path / "full.wav", 16000, np.arange(32000) % 1000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaDecodeError, match=r"stream #0 \(audio, pcm_s16le\).*truncated"):
        load_audio(tmp_path / "cut.wav")
    tone = (0.3 * np.sin(np.arange(88200) / 44100 * 2 * np.pi * 440)).astype(np.float32)
    write_audio_file(tmp_path / "full.mp3", np.stack([tone, tone]), 44100, "mp3", "stereo", "fltp")
    mp3 = (tmp_path / "full.mp3").read_bytes()
    assert load_audio(tmp_path / "full.mp3").size == 32000
    for percent in (10, 50, 90):
        (tmp_path / "cut.mp3").write_bytes(mp3[: len(mp3) * percent // 100])
        with pytest.raises(MediaDecodeError, match=r"stream #0 \(audio"):
            load_audio(tmp_path / "cut.mp3")


# ----------------------------------------------------------------------------- R7/R8: bad samples
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_audio_is_invalid(tmp_path, bad):
    x = np.zeros((1, 4000), np.float32)
    x[0, 2500] = bad
    write_audio_file(tmp_path / "bad.wav", x, 16000, "pcm_f32le", "mono", "flt")
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        load_audio(tmp_path / "bad.wav")


def test_zero_length_audio_is_invalid(tmp_path):
    write_wav_header(tmp_path / "empty.wav", 16000, np.zeros(0, np.int16))
    with pytest.raises(InvalidInputError, match="zero-length|audio"):
        load_audio(tmp_path / "empty.wav")
    silence = tmp_path / "silence.wav"
    write_wav_header(silence, 16000, np.zeros(1600, np.int16))
    assert np.array_equal(load_audio(silence), np.zeros(1600, np.float32))  # silence is valid


# ----------------------------------------------------------------------------- R5: hostile names
HOSTILE_NAMES = ["with space.mp4", "ünïcødé 视频.mp4", ";touch PWNED.mp4", "$(id).mp4", "-leading.mp4",
                 "`touch PWNED`.mp4", "http:evil.mp4", "concat:a.mp4|b.mp4", "x" * 200 + ".mp4"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_names(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "dir with ;$(id) and ü"
    folder.mkdir()
    path = write_clip(folder / name, frames=3)
    assert path.name == name and path.is_file()
    info = probe(path)
    assert (info.video.frames, info.audio.codec) == (3, "aac")
    assert len(list(iter_video_frames(path))) == 3
    assert load_audio(path).size == 3 * 640
    relative = Path(folder.name) / name  # relative paths too (FFmpeg must not see a protocol prefix)
    assert probe(relative).video.frames == 3
    assert not list(tmp_path.rglob("PWNED")) and not list(Path.cwd().glob("PWNED"))
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary files left


# ----------------------------------------------------------------------------- R23: atomic output
def test_exception_inside_with_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, 64, 48, preset="ultrafast") as w:
            w.write(index_rgb(0))
            partial = list(tmp_path.glob(".out.mp4.*.partial"))
            assert len(partial) == 1 and not target.exists()  # written beside the target, not at it
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_abort_close_without_frames_and_gc(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", 64, 48, preset="ultrafast")
    w.write(index_rgb(0))
    w.abort()
    w.abort()  # idempotent
    with pytest.raises(InvalidInputError, match="closed or aborted"):
        w.write(index_rgb(1))
    with pytest.raises(InvalidInputError, match="at least one frame"):
        VideoWriter(tmp_path / "b.mp4", 64, 48).close()
    w = VideoWriter(tmp_path / "c.mp4", 64, 48, preset="ultrafast")
    w.write(index_rgb(0))
    del w
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_failed_job_keeps_previous_output(tmp_path):
    target = write_clip(tmp_path / "out.mp4", frames=4)
    before = target.read_bytes()
    with pytest.raises(InvalidInputError):
        with VideoWriter(target, 64, 48, preset="ultrafast") as w:
            w.write(index_rgb(0))
            w.write(np.zeros((1, 1, 3), np.uint8))  # a bad frame mid-job
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert probe(target).video.frames == 4  # and the engine still works after the failure


def test_concurrent_writers_do_not_touch_each_other(tmp_path):
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            with VideoWriter(tmp_path / f"out{i}.mp4", 64, 48, preset="ultrafast") as w:
                for k in range(5 + i):
                    w.write(index_rgb(k))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [probe(tmp_path / f"out{i}.mp4").video.frames for i in range(4)] == [5, 6, 7, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{i}.mp4" for i in range(4)]


def test_unsupported_encoder_settings_are_typed(tmp_path):
    with pytest.raises(InvalidInputError, match="encoder settings"):
        VideoWriter(tmp_path / "a.mp4", 64, 48, audio=np.zeros(100, np.float32), sample_rate=12345)
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time, numpy as np
from engine.media import VideoWriter
w = VideoWriter(sys.argv[1], 64, 48, preset="ultrafast", audio=np.zeros(16000 * 60, np.float32))
for i in range(100000):
    w.write(np.full((48, 64, 3), i % 255, np.uint8))
    if i == 30:
        print("writing", flush=True)
    time.sleep(0.001)
"""


def test_killed_during_muxing_leaves_nothing_at_target(tmp_path):
    """R23: SIGKILL mid-job; the target never appears (the hidden .partial file is all that remains)."""
    target = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not target.exists()
    assert [p.name.endswith(".partial") and p.name.startswith(".out.mp4.") for p in tmp_path.iterdir()] == [True]
