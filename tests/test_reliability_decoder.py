"""R2 (a decoder that hangs or crashes) and R6 (frame rates and variable-rate input keep audio and video in sync)."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import DecodeTimeoutError, InvalidInputError, MediaDecodeError
from engine.media import MediaLimits, VideoWriter, iter_video_frames, load_audio, probe
from engine.media.watchdog import run_isolated, with_timeout
from test_media import index_rgb, read_index, write_pts_clip
from test_media_reliability import write_clip, write_wav_header

STALL_S = 1.0  # the configured timeout in these tests


# ----------------------------------------------------------------------------- R2: hangs
class StallingReader(io.RawIOBase):
    """A pipe that delivers the first `limit` bytes of a file and then stops (its writer hung), until released."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit, self.pos = data, limit, 0
        self.released = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pos >= self.limit:
            self.released.wait()  # blocks inside FFmpeg's read callback, as a stalled pipe or NFS mount does
            return 0
        n = min(len(buffer), self.limit - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def decode_stream(reader) -> object:
    """A real FFmpeg decode of a non-seekable input, frame by frame."""
    with av.open(reader, mode="r") as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def test_stalled_input_fails_within_the_timeout_and_the_process_survives(tmp_path):
    data = write_clip(tmp_path / "clip.mp4", frames=60, size=(96, 128)).read_bytes()  # faststart: streamable
    reader = StallingReader(data, limit=len(data) // 2)
    other_job: dict = {}

    def other() -> None:  # a second job decoding meanwhile
        other_job["frames"] = sum(1 for _ in iter_video_frames(tmp_path / "clip.mp4"))

    worker = threading.Thread(target=other)
    start = time.monotonic()
    worker.start()
    got = 0
    with pytest.raises(DecodeTimeoutError, match="stalled"):
        for _ in with_timeout(decode_stream(reader), STALL_S, "stalled pipe"):
            got += 1
    waited = time.monotonic() - start
    assert 0 < got < 60 and waited < STALL_S + 5
    worker.join(timeout=60)
    assert other_job["frames"] == 60  # the other job finished normally
    assert [read_index(f.rgb) for f in iter_video_frames(write_index_clip(tmp_path / "next.mp4"))] == list(range(8))
    reader.released.set()  # let the abandoned decoder thread end


def write_index_clip(path: Path, n: int = 8) -> Path:
    with VideoWriter(path, 64, 48, crf=10, preset="ultrafast") as w:
        for i in range(n):
            w.write(index_rgb(i))
    return path


def test_iter_video_frames_applies_the_stall_limit(tmp_path, monkeypatch):
    path = write_index_clip(tmp_path / "clip.mp4")
    hang = threading.Event()

    def stuck_after_two(*args, **kwargs):
        yield from list(_real(*args, **kwargs))[:2]
        hang.wait()

    import engine.media.video as video

    _real = video._decode_resampled
    monkeypatch.setattr(video, "_decode_resampled", stuck_after_two)
    frames = iter_video_frames(path, limits=MediaLimits(stall_timeout_s=STALL_S))
    assert [read_index(next(frames).rgb) for _ in range(2)] == [0, 1]
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match=r"stream #0 \(video, h264\).*stall_timeout_s"):
        next(frames)
    assert time.monotonic() - start < STALL_S + 2
    hang.set()


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # no writer: opening it for reading would block forever
    start = time.monotonic()
    with pytest.raises(InvalidInputError, match="special file"):
        probe(fifo)
    assert time.monotonic() - start < 1.0


# ----------------------------------------------------------------------------- R2: crashes, in a child process
def count_frames(path: str) -> int:
    return sum(1 for _ in iter_video_frames(path))


def crash_mid_decode(path: str) -> int:
    for i, _ in enumerate(iter_video_frames(path)):
        if i == 3:
            os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder bug does to its process
    return -1


def hang_mid_decode(path: str) -> int:
    for i, _ in enumerate(iter_video_frames(path)):
        if i == 3:
            time.sleep(3600)
    return -1


def raise_typed(path: str) -> int:
    return count_frames(path + ".missing")


def test_isolated_decoder_crash_and_hang_are_typed_and_the_caller_survives(tmp_path):
    path = str(write_index_clip(tmp_path / "clip.mp4"))
    with pytest.raises(MediaDecodeError, match="crashed .*SIGSEGV"):
        run_isolated(crash_mid_decode, path, timeout_s=60, what="decode clip.mp4")
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="hung"):
        run_isolated(hang_mid_decode, path, timeout_s=8, what="decode clip.mp4")
    assert time.monotonic() - start < 15
    with pytest.raises(InvalidInputError, match="no such file"):  # typed errors cross the process boundary
        run_isolated(raise_typed, path, timeout_s=60)
    assert run_isolated(count_frames, path, timeout_s=60) == 8  # the next job is fine
    assert multiprocessing.active_children() == []  # no child process remains


# ----------------------------------------------------------------------------- R6: frame rates and VFR
CLICK = 0.9
RATE = 16_000


def _clicks_wav(path: Path, times_s: list[float], seconds: float) -> None:
    x = np.zeros(int(seconds * RATE), np.float32)
    for t in times_s:
        x[round(t * RATE)] = CLICK
    write_wav_header(path, RATE, np.round(x * 32767).astype(np.int16))


def _source(tmp_path: Path, case: str) -> tuple[Path, list[float]]:
    """A clip whose frame i shows code i, and the presentation time of each frame (seconds from the first)."""
    path = tmp_path / f"{case}.mp4"
    if case == "vfr":
        rng = np.random.default_rng(11)
        gaps = rng.choice([0.01, 0.033, 0.04, 0.05, 0.1, 0.2], size=60)  # bursts and holes, 100 fps to 5 fps
        times = [0.0, *np.cumsum(gaps).round(3).tolist()]
        write_pts_clip(path, times)
        return path, times
    fps = {"23.976": Fraction(24000, 1001), "29.97": Fraction(30000, 1001), "30": Fraction(30)}[case]
    n = math.ceil(fps * 4)  # 4 s
    with VideoWriter(path, 64, 48, fps=fps, crf=10, preset="ultrafast") as w:
        for i in range(n):
            w.write(index_rgb(i))
    return path, [float(i / fps) for i in range(n)]


@pytest.mark.parametrize("case", ["23.976", "29.97", "30", "vfr"])
def test_audio_video_offset_under_one_frame_at_start_middle_end(tmp_path, case):
    """Source frames carry their index; the speech has a click at the time of three source frames. After the
    engine's I/O path (decode by pts to 25 fps, mux with the speech, decode the result), the first output frame
    showing that source frame is at most one frame after its click, never before it."""
    src, times = _source(tmp_path, case)
    n = len(times)
    shown = {read_index(f.rgb) for f in iter_video_frames(src)}  # down-sampling drops some source frames
    marked = [min(i for i in shown if i >= target) for target in (0, n // 2, n - 3)]  # start, middle, end
    speech = tmp_path / "speech.wav"
    _clicks_wav(speech, [times[i] for i in marked], seconds=times[-1] + 0.5)
    out = tmp_path / "out.mp4"
    samples = load_audio(speech)
    with VideoWriter(out, 64, 48, audio=samples, preset="ultrafast", crf=10) as w:
        for frame in iter_video_frames(src):
            w.write(frame.rgb)
    codes = [read_index(f.rgb) for f in iter_video_frames(out)]
    heard = load_audio(out)
    for i, t in zip(marked, (times[i] for i in marked)):
        near = slice(max(0, round((t - 0.1) * RATE)), round((t + 0.1) * RATE))
        click_s = (near.start + int(np.argmax(np.abs(heard[near])))) / RATE  # AAC keeps the click within ~1 ms
        assert abs(click_s - t) < 0.002, (case, i, click_s, t)
        first_shown = codes.index(i) / 25
        offset = first_shown - click_s
        assert -0.002 <= offset < 1 / 25, (case, i, offset)
