"""Decode video to RGB frames resampled to a constant rate by presentation time, one frame at a time.

Timing rule (R6): output frame k has time t_k = k / fps, measured from the video stream's start
time, and shows the latest source frame whose pts <= t_k (the first source frame for any t_k before
it). Output frames continue while t_k < end of the last source frame (its pts + duration). This is
what a constant-rate re-encode (`-r 25`) does, but computed exactly with rational timestamps, so a
25 fps source maps 1:1 and 23.976/29.97/30/60 fps or variable-rate sources keep audio sync.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from engine.constants import FPS
from engine.errors import InvalidInputError, MediaDecodeError, expect
from engine.media.probe import (MediaLimits, VideoInfo, configure_decoder, iter_decoded, open_input, probe,
                                stream_name)
from engine.media.watchdog import with_timeout

RATE_DENOMINATOR_LIMIT = 1_000_000  # float fps -> Fraction (29.97002997 -> 30000/1001)
TRUNCATION_TOLERANCE_FRAMES = 2  # decoded end may fall short of the declared duration by this much
RGB_THREADS = 0  # swscale threads for YUV -> RGB (0: one per core)


@dataclass(frozen=True)
class VideoFrame:
    index: int  # output frame number k
    time_s: float  # k / fps, seconds from the start of the video stream
    rgb: np.ndarray  # [H, W, 3] uint8, as displayed (rotation applied)


def as_rate(fps: float | Fraction) -> Fraction:
    """Exact output frame rate; rejects non-positive values."""
    expect(isinstance(fps, (int, float, Fraction)) and fps > 0, InvalidInputError, "fps", "a positive number", fps)
    return Fraction(fps).limit_denominator(RATE_DENOMINATOR_LIMIT)


def estimate_frame_count(info: VideoInfo, fps: float | Fraction = FPS) -> int:
    """Number of frames iter_video_frames yields for a complete stream: ceil(duration * fps), from metadata."""
    rate = as_rate(fps)
    exact = Fraction(info.duration_s).limit_denominator(RATE_DENOMINATOR_LIMIT) * rate
    return max(1, math.ceil(exact)) if info.duration_s > 0 else 0


def count_source_frames(path: str | os.PathLike, *, limits: MediaLimits = MediaLimits()) -> int:
    """Exact number of coded video frames, by demuxing packets (no decoding; fast even for long files)."""
    info = probe(path, limits=limits, require_video=True, decode_check=False)
    with open_input(path, limits=limits) as container:
        stream = container.streams[info.video.index]
        try:
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
        except (av.FFmpegError, OSError) as e:
            raise MediaDecodeError(f"{path}: {stream_name(stream)}: expected a readable packet sequence, "
                                   f"found a demux error: {e}") from e


def _frame_duration(frame: av.VideoFrame, stream, step: Fraction) -> Fraction:
    duration = getattr(frame, "duration", None)
    if duration:
        return duration * (frame.time_base or stream.time_base)
    return step


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int], autorotate: bool,
            reformatter: VideoReformatter) -> np.ndarray:
    """[H, W, 3] uint8 RGB (FFmpeg's default rgb24 conversion), scaled to the first frame's coded size if it changed.

    One reformatter per stream reuses its swscale context; swscale threads give bit-identical output.
    """
    scale = {} if (frame.width, frame.height) == size else {"width": size[0], "height": size[1]}  # size change
    rgb = reformatter.reformat(frame, format="rgb24", threads=RGB_THREADS, **scale).to_ndarray()
    quarter_turns = int(round(frame.rotation / 90.0)) % 4 if autorotate else 0
    if quarter_turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=quarter_turns))  # counter-clockwise, as the display matrix says
    return rgb


def iter_video_frames(path: str | os.PathLike, *, fps: float | Fraction = FPS, limits: MediaLimits = MediaLimits(),
                      start_s: float = 0.0, max_frames: int | None = None,
                      autorotate: bool = True) -> Iterator[VideoFrame]:
    """Yield VideoFrame(index, time_s, rgb [H,W,3] uint8) at a constant `fps`, chosen by pts (module docstring).

    Holds O(1) frames: the current source frame and the decoder's own buffers. `start_s` seeks, and
    the first frame yielded has index ceil(start_s * fps). `max_frames` stops early (fast tests).
    Frames whose pts does not increase are dropped. A stream that ends more than
    TRUNCATION_TOLERANCE_FRAMES before its declared duration raises MediaDecodeError naming the stream,
    as does any demux/decode error (R1). Bad paths and limits raise InvalidInputError before decoding.
    """
    rate = as_rate(fps)
    expect(start_s >= 0, InvalidInputError, "start_s", ">= 0", start_s)
    expect(max_frames is None or max_frames >= 0, InvalidInputError, "max_frames", "None or >= 0", max_frames)
    info = probe(path, limits=limits, require_video=True, decode_check=False)
    if max_frames == 0:
        return
    frames = _decode_resampled(path, info, rate, limits, start_s, max_frames, autorotate)
    yield from with_timeout(frames, limits.stall_timeout_s, f"{info.path}: {info.video.name}")


def _decode_resampled(path, info, rate: Fraction, limits: MediaLimits, start_s: float, max_frames: int | None,
                      autorotate: bool) -> Iterator[VideoFrame]:
    """The body of iter_video_frames (run under its stall watchdog)."""
    v = info.video
    with open_input(path, limits=limits) as container:
        stream = container.streams[v.index]
        configure_decoder(stream, limits)
        step = 1 / Fraction(v.rate) if v.rate else 1 / rate  # nominal source frame duration
        origin = stream.start_time * stream.time_base if stream.start_time is not None else None
        k = math.ceil(Fraction(start_s).limit_denominator(RATE_DENOMINATOR_LIMIT) * rate)
        if start_s > 0 and origin is not None:
            container.seek(int((origin + Fraction(start_s)) / stream.time_base), stream=stream, backward=True)
        emitted = 0
        size = (v.coded_width, v.coded_height)
        reformatter = VideoReformatter()
        prev, prev_t, prev_rgb, end = None, None, None, None

        def emit(frame) -> Iterator[VideoFrame]:
            nonlocal k, emitted, prev_rgb
            if prev_rgb is None:
                prev_rgb = _to_rgb(frame, size, autorotate, reformatter)
                rgb = prev_rgb
            else:
                rgb = prev_rgb.copy()  # the same source frame again (upsampling): consumers may edit arrays
            yield VideoFrame(index=k, time_s=float(k / rate), rgb=rgb)
            k += 1
            emitted += 1

        for _, frame in iter_decoded(container, stream):
            if frame.pts is None:  # no timestamp: one nominal frame after the previous one
                if prev_t is None:
                    continue
                t = prev_t + step
            else:
                t = frame.pts * (frame.time_base or stream.time_base)
                origin = t if origin is None else origin
                t -= origin
            if prev_t is not None and t <= prev_t:
                continue  # duplicate or backwards pts
            while prev is not None and k / rate < t:
                yield from emit(prev)
                if max_frames is not None and emitted >= max_frames:
                    return
            prev, prev_t, prev_rgb = frame, t, None
            end = t + _frame_duration(frame, stream, step)
        if prev is None:
            raise MediaDecodeError(f"{path}: {stream_name(stream)}: expected decodable frames, found none")
        while k / rate < end:
            yield from emit(prev)
            if max_frames is not None and emitted >= max_frames:
                return
        short = Fraction(v.duration_s).limit_denominator(RATE_DENOMINATOR_LIMIT) - end
        if v.duration_s > 0 and short > TRUNCATION_TOLERANCE_FRAMES * step:
            raise MediaDecodeError(f"{path}: {stream_name(stream)}: expected frames up to the declared "
                                   f"{v.duration_s:.3f} s, found the stream ends at {float(end):.3f} s "
                                   "(truncated file)")
