"""Everything about a job's files that can be known before any model loads, checked in about a second.

`preflight(video, audio, output)` is what every front end runs first (CLI, SDK, batch runner):
  1. the output path (not an input, directory exists and is writable, an extension we write);
  2. the video's metadata against the limits, its first frame decoded (probe), and a frame large
     enough to hold the smallest face the detector accepts;
  3. a demux pass over every video packet without decoding: sample tables that point past the end
     of the file, fewer packets than the container declares, packets whose NAL unit lengths do not
     add up (H.264/HEVC in MP4/MOV/MKV) -- the corruption a container can tell cheaply;
  4. the whole audio track decoded and validated (it is small): NaN/Inf samples, truncated or
     damaged MP3/AAC, a WAV shorter than its header says (longer: read in full, with a warning),
     zero-length audio (InvalidInputError, exit 2).
Corruption inside the coded pictures is found only by decoding; it still fails later with a
MediaDecodeError naming the stream, and the partial output is removed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.constants import SAMPLE_RATE
from engine.errors import InvalidInputError, MediaDecodeError, expect
from engine.media.audio import load_audio
from engine.media.paths import VIDEO_SUFFIXES, check_output
from engine.media.probe import MediaInfo, MediaLimits, decode_error, open_input, probe, stream_name
from engine.media.video import RATE_DENOMINATOR_LIMIT, TRUNCATION_TOLERANCE_FRAMES

NAL_CODECS = ("h264", "hevc")  # length-prefixed NAL units when the extradata is avcC / hvcC


@dataclass(frozen=True)
class Preflight:
    """What the checks found; `samples` is the validated speech, ready for the pipeline."""

    video: MediaInfo
    audio: MediaInfo
    samples: np.ndarray  # [S] float32 mono at `sample_rate`, finite, S > 0
    sample_rate: int
    video_packets: int  # coded video frames demuxed
    output: Path | None  # the checked absolute output path
    seconds: float  # wall time of all checks


# The smallest face the detector accepts (engine.face.detection.base.FaceThresholds: the official 50x80 minimum;
# a test keeps the two equal). Kept here so that the checks run without importing torch.
MIN_FACE_WIDTH, MIN_FACE_HEIGHT = 50, 80


def min_frame_size() -> tuple[int, int]:
    """(width, height) of the smallest frame that can hold a face the detector accepts."""
    return MIN_FACE_WIDTH, MIN_FACE_HEIGHT


def _nal_length_size(stream) -> int:
    """Bytes of each NAL unit's length prefix (avcC / hvcC extradata), 0 when the stream is not length-prefixed."""
    extra = bytes(stream.codec_context.extradata or b"")
    name = stream.codec_context.name
    if name not in NAL_CODECS or len(extra) < 7 or extra[0] != 1:  # Annex B or unknown: nothing to walk
        return 0
    if name == "h264":
        return (extra[4] & 3) + 1
    return (extra[21] & 3) + 1 if len(extra) > 22 else 0


def _nal_problem(data: memoryview, length_size: int) -> str | None:
    """Why a length-prefixed access unit is malformed, or None: every NAL length must fit and the units fill it."""
    pos, size = 0, len(data)
    while pos < size:
        if pos + length_size > size:
            return f"{size - pos} stray bytes after the last NAL unit"
        n = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > size:
            return f"a NAL unit of {n} bytes where {size - pos} remain"
        if data[pos] & 0x80:
            return "a NAL unit with the forbidden bit set"
        pos += n
    return None


def check_video_packets(path: str | os.PathLike, info: MediaInfo, *, limits: MediaLimits = MediaLimits()) -> int:
    """Demux every packet of the first video stream without decoding; MediaDecodeError for what it shows.

    Returns the number of coded frames. About 2 ms for the 10 s 1080x1920 HEVC demo clip.
    """
    v = info.video
    expect(v is not None, InvalidInputError, str(path), "a video stream", f"streams {list(info.streams)}")
    size = info.size_bytes
    with open_input(path, limits=limits) as container:
        stream = container.streams[v.index]
        name = stream_name(stream)
        length_size = _nal_length_size(stream)
        count, end = 0, None
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                raise decode_error(name, path, e, f"demux after {count} packets") from e
            if not packet.size:
                continue  # the demuxer's end-of-stream marker
            count += 1
            if packet.pos is not None and packet.pos >= 0 and packet.pos + packet.size > size:
                raise MediaDecodeError(f"{path}: {name}: expected packet {count} inside the file, found the sample "
                                       f"table pointing past its end ({packet.pos + packet.size} > {size} bytes; "
                                       "truncated file)")
            if packet.is_corrupt:
                cut = packet.pos is not None and packet.pos + packet.size >= size
                raise MediaDecodeError(f"{path}: {name}: expected intact packets, found packet {count} flagged "
                                       "corrupt by the demuxer" + (" at the end of the file (truncated file)" if cut
                                                                   else ""))
            if length_size:
                problem = _nal_problem(memoryview(packet), length_size)
                if problem:
                    raise MediaDecodeError(f"{path}: {name}: expected well-formed NAL units in packet {count} "
                                           f"(pts {packet.pts}), found {problem} (corrupt file)")
            if packet.pts is not None and packet.duration:
                t = (packet.pts + packet.duration) * packet.time_base
                end = t if end is None or t > end else end
    if v.frames_declared and count < v.frames:
        raise MediaDecodeError(f"{path}: {name}: expected {v.frames} frames as the container declares, found "
                               f"{count} before the end of the file (truncated file)")
    if count == 0:
        raise InvalidInputError(f"{path}: {name}: expected at least one frame, found a zero-length stream")
    if not v.frames_declared and end is not None and v.duration_s > 0:
        start = stream.start_time * stream.time_base if stream.start_time is not None else 0
        short = Fraction(v.duration_s).limit_denominator(RATE_DENOMINATOR_LIMIT) - (end - start)
        step = 1 / Fraction(v.rate) if v.rate else Fraction(0)
        if short > TRUNCATION_TOLERANCE_FRAMES * step:
            raise MediaDecodeError(f"{path}: {name}: expected packets up to the declared {v.duration_s:.3f} s, "
                                   f"found the last one ends at {float(end - start):.3f} s (truncated file)")
    return count


def preflight(video: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike | None = None, *,
              limits: MediaLimits = MediaLimits(), sample_rate: int = SAMPLE_RATE,
              output_suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> Preflight:
    """Check a lip-sync job's files before any model loads (module docstring); typed errors, nothing written.

    Raises InvalidInputError (exit 2: bad output path, output is an input, not media, over limits, frames
    too small for a face, zero-length or NaN audio) or MediaDecodeError (exit 3: corrupt or truncated).
    """
    t0 = time.perf_counter()
    out = None
    if output is not None:
        out = check_output(output, inputs=(("--video", video), ("--audio", audio)), suffixes=output_suffixes)
    video_info = probe(video, limits=limits, require_video=True)
    v = video_info.video
    min_w, min_h = min_frame_size()
    expect(v.width >= min_w and v.height >= min_h, InvalidInputError, f"{video_info.path}: {v.name} size",
           f"at least {min_w}x{min_h} px (the smallest face the detector accepts)", f"{v.width}x{v.height} px")
    packets = check_video_packets(video, video_info, limits=limits)
    audio_info = probe(audio, limits=limits, require_audio=True)
    samples = load_audio(audio, sample_rate=sample_rate, limits=limits)
    return Preflight(video=video_info, audio=audio_info, samples=samples, sample_rate=sample_rate,
                     video_packets=packets, output=out, seconds=time.perf_counter() - t0)
