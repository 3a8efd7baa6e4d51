"""Probe a media file from its metadata and reject what cannot work before any model loads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from engine.errors import InvalidInputError, MediaDecodeError, expect

SNIFF_BYTES = 4096  # bytes read to tell a text file from a binary media file
# Container signatures: a file that starts like this but does not open is corrupt media, not "not media".
_MEDIA_MAGIC = (
    (4, b"ftyp"),  # mp4 / mov / m4a / 3gp (box type after the 4-byte size)
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"RIFF"),  # wav / avi
    (0, b"ID3"),  # mp3 with tags
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"OggS"),
    (0, b"fLaC"),
)


@dataclass(frozen=True)
class MediaLimits:
    """What the engine accepts, checked against container metadata before any frame is decoded."""

    min_width: int = 16  # px, displayed width (a 1x1 or 2x2 "video" is not a picture of anything)
    min_height: int = 16  # px, displayed height
    max_width: int = 8192  # px, displayed width
    max_height: int = 8192  # px, displayed height
    max_pixels: int = 8192 * 4320  # px per frame (8K)
    max_duration_s: float = 3 * 3600.0  # s
    max_fps: float = 240.0  # frames per second (average)
    min_sample_rate: int = 4000  # Hz
    max_sample_rate: int = 384_000  # Hz
    max_channels: int = 16
    max_file_bytes: int = 64 * 2**30
    strict_decode: bool = True  # decoders raise on bitstream errors (err_detect=explode) instead of concealing
    stall_timeout_s: float | None = 60.0  # s without a decoded frame before the job fails (R2); None: no watchdog

    def __post_init__(self) -> None:
        for name in ("min_width", "min_height", "max_width", "max_height", "max_pixels", "max_duration_s", "max_fps",
                     "min_sample_rate", "max_sample_rate", "max_channels", "max_file_bytes"):
            value = getattr(self, name)
            expect(value > 0, InvalidInputError, f"MediaLimits.{name}", "> 0", value)
        expect(self.stall_timeout_s is None or self.stall_timeout_s > 0, InvalidInputError,
               "MediaLimits.stall_timeout_s", "None or > 0", self.stall_timeout_s)
        expect(self.min_sample_rate <= self.max_sample_rate, InvalidInputError, "MediaLimits sample-rate range",
               "min_sample_rate <= max_sample_rate", (self.min_sample_rate, self.max_sample_rate))


def describe_stream(index: int, kind: str, codec: str) -> str:
    """How errors name a stream: 'stream #0 (video, hevc)'."""
    return f"stream #{index} ({kind}, {codec})"


@dataclass(frozen=True)
class VideoInfo:
    index: int  # stream index in the container
    codec: str  # decoder name, e.g. "hevc", "h264"
    width: int  # px, as displayed (after rotation)
    height: int  # px, as displayed (after rotation)
    coded_width: int  # px, as stored
    coded_height: int  # px, as stored
    fps: float  # average frame rate (frames / s)
    rate: Fraction  # the same, exact
    duration_s: float  # s
    start_s: float  # s, pts of the first frame
    frames: int  # declared frame count, or duration * fps when the container does not say
    frames_declared: bool  # True when `frames` comes from the container
    rotation: int  # degrees counter-clockwise to display (0, 90, 180, 270)
    pix_fmt: str | None

    @property
    def name(self) -> str:
        return describe_stream(self.index, "video", self.codec)


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str  # e.g. "aac", "pcm_s16le", "mp3float"
    sample_rate: int  # Hz
    channels: int
    layout: str  # e.g. "mono", "stereo", "5.1"
    sample_format: str  # e.g. "s16", "fltp"
    duration_s: float  # s (0.0 when unknown)
    start_s: float  # s

    @property
    def name(self) -> str:
        return describe_stream(self.index, "audio", self.codec)


@dataclass(frozen=True)
class MediaInfo:
    path: str
    format: str  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "wav"
    size_bytes: int
    duration_s: float  # container duration, s
    streams: tuple[str, ...]  # type of every stream, in index order
    video: VideoInfo | None  # the first video stream, if any
    audio: AudioInfo | None  # the first audio stream, if any


def check_path(path: str | os.PathLike, *, limits: MediaLimits = MediaLimits()) -> Path:
    """Return the absolute path of an existing, non-empty, non-text file, or raise InvalidInputError.

    The path is made absolute so that FFmpeg never reads a `name:` prefix as a protocol.
    """
    expect(isinstance(path, (str, os.PathLike)), InvalidInputError, "media path", "str or os.PathLike",
           type(path).__name__)
    p = Path(os.fspath(path)).absolute()
    expect(p.exists(), InvalidInputError, f"{p}", "an existing file", "no such file")
    expect(p.is_file(), InvalidInputError, f"{p}", "a regular file", "a directory or special file")
    size = p.stat().st_size
    expect(size > 0, InvalidInputError, f"{p}", "a media file", "an empty file (0 bytes)")
    expect(size <= limits.max_file_bytes, InvalidInputError, f"{p}", f"at most {limits.max_file_bytes} bytes",
           f"{size} bytes")
    with open(p, "rb") as f:
        head = f.read(SNIFF_BYTES)
    expect(not _looks_like_text(head), InvalidInputError, f"{p}", "a media file", f"a text file starting {head[:24]!r}")
    return p


def _looks_like_text(head: bytes) -> bool:
    """True for plain ASCII/UTF-8 text (playlists, scripts, renamed notes); media headers hold binary bytes."""
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


def _has_media_magic(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(16)
    return any(head[off:off + len(magic)] == magic for off, magic in _MEDIA_MAGIC)


@contextlib.contextmanager
def open_input(path: str | os.PathLike, *, limits: MediaLimits = MediaLimits(),
               options: dict[str, str] | None = None) -> Iterator[av.container.InputContainer]:
    """Open `path` for reading with PyAV (demuxer `options`); map open failures to typed errors and always close."""
    p = check_path(path, limits=limits)
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore", options=options or {})
    except (av.FFmpegError, OSError) as e:
        if _has_media_magic(p):
            raise MediaDecodeError(f"{p}: expected a readable media container, found a corrupt one "
                                   f"(truncated, or the moov/header is missing): {e}") from e
        raise InvalidInputError(f"{p}: expected a media file (mp4, mov, mkv, wav, mp3, ...), "
                                f"found data FFmpeg cannot read: {e}") from e
    try:
        yield container
    finally:
        container.close()


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _video_info(s: av.video.stream.VideoStream, container_duration_s: float, rotation: int = 0) -> VideoInfo:
    cc = s.codec_context
    rate = s.average_rate or s.guessed_rate or s.base_rate or Fraction(0)
    duration = _seconds(s.duration, s.time_base) or container_duration_s
    declared = int(s.frames or 0)
    w, h = cc.width, cc.height
    if rotation in (90, 270):
        w, h = h, w
    return VideoInfo(
        index=s.index, codec=cc.name, width=w, height=h, coded_width=cc.width, coded_height=cc.height,
        fps=float(rate), rate=Fraction(rate), duration_s=duration,
        start_s=_seconds(s.start_time, s.time_base) or 0.0,
        frames=declared if declared > 0 else round(duration * float(rate)),
        frames_declared=declared > 0, rotation=rotation,
        pix_fmt=cc.pix_fmt,
    )


def _audio_info(s: av.audio.stream.AudioStream) -> AudioInfo:
    cc = s.codec_context
    return AudioInfo(
        index=s.index, codec=cc.name, sample_rate=int(cc.sample_rate or 0), channels=int(cc.channels or 0),
        layout=cc.layout.name if cc.layout else "", sample_format=cc.format.name if cc.format else "",
        duration_s=_seconds(s.duration, s.time_base) or 0.0,
        start_s=_seconds(s.start_time, s.time_base) or 0.0,
    )


def info_from_container(container: av.container.InputContainer, path: str | os.PathLike,
                        rotation: int = 0) -> MediaInfo:
    """Build MediaInfo from an open container's metadata (no frame is decoded)."""
    duration = (container.duration or 0) / av.time_base
    videos = [s for s in container.streams.video if not _is_attached_picture(s)]
    audios = list(container.streams.audio)
    for s in videos[:1] + audios[:1]:
        if s.codec_context is None:  # FFmpeg found no decoder for what the header says (corrupt or unsupported)
            raise MediaDecodeError(f"{path}: {describe_stream(s.index, s.type, 'unknown codec')}: expected a codec "
                                   "FFmpeg can decode, found none (corrupt header or unsupported codec)")
    return MediaInfo(
        path=str(path), format=container.format.name, size_bytes=Path(path).stat().st_size, duration_s=duration,
        streams=tuple(s.type for s in container.streams),
        video=_video_info(videos[0], duration, rotation) if videos else None,
        audio=_audio_info(audios[0]) if audios else None,
    )


def _is_attached_picture(s) -> bool:
    """Cover art in mp3/m4a shows up as a one-frame video stream; it is not video."""
    return "attached_pic" in str(getattr(s, "disposition", "")).lower()


def check_limits(info: MediaInfo, limits: MediaLimits, *, require_video: bool, require_audio: bool) -> None:
    """Raise InvalidInputError when the metadata says the file cannot (or must not) be processed."""
    p = info.path
    expect(len(info.streams) > 0, InvalidInputError, p, "at least one stream", "a container with zero streams")
    if require_video:
        expect(info.video is not None, InvalidInputError, p, "a video stream", f"streams {list(info.streams)}")
    if require_audio:
        expect(info.audio is not None, InvalidInputError, p, "an audio stream", f"streams {list(info.streams)}")
    expect(info.video is not None or info.audio is not None, InvalidInputError, p, "a video or audio stream",
           f"streams {list(info.streams)}")
    _check_max(f"{p}: duration", info.duration_s, limits.max_duration_s, "s", "max_duration_s")
    v = info.video
    if v is not None:
        what = f"{p}: {v.name}"
        expect(v.width > 0 and v.height > 0, InvalidInputError, f"{what} size", "a positive size",
               f"{v.width}x{v.height}")
        expect(v.width >= limits.min_width and v.height >= limits.min_height, InvalidInputError, f"{what} size",
               f"at least {limits.min_width}x{limits.min_height} px (MediaLimits.min_width/min_height)",
               f"{v.width}x{v.height} px")
        _check_max(f"{what} width", v.width, limits.max_width, "px", "max_width")
        _check_max(f"{what} height", v.height, limits.max_height, "px", "max_height")
        _check_max(f"{what} pixels per frame", v.width * v.height, limits.max_pixels, "px", "max_pixels")
        expect(v.fps > 0, InvalidInputError, f"{what} frame rate", "> 0 fps", f"{v.fps:g} fps")
        _check_max(f"{what} frame rate", v.fps, limits.max_fps, "fps", "max_fps")
        _check_max(f"{what} duration", v.duration_s, limits.max_duration_s, "s", "max_duration_s")
    a = info.audio
    if a is not None:
        what = f"{p}: {a.name}"
        expect(limits.min_sample_rate <= a.sample_rate <= limits.max_sample_rate, InvalidInputError,
               f"{what} sample rate", f"{limits.min_sample_rate}..{limits.max_sample_rate} Hz (MediaLimits)",
               f"{a.sample_rate} Hz")
        expect(1 <= a.channels <= limits.max_channels, InvalidInputError, f"{what} channels",
               f"1..{limits.max_channels} (MediaLimits.max_channels)", a.channels)
        _check_max(f"{what} duration", a.duration_s, limits.max_duration_s, "s", "max_duration_s")


def _check_max(what: str, value: float, limit: float, unit: str, field: str) -> None:
    expect(value <= limit, InvalidInputError, what, f"<= {limit:g} {unit} (MediaLimits.{field})", f"{value:g} {unit}")


def stream_name(stream) -> str:
    """The name of an open PyAV stream in error messages."""
    cc = stream.codec_context
    return describe_stream(stream.index, stream.type, cc.name if cc is not None else "no decoder")


def configure_decoder(stream, limits: MediaLimits) -> None:
    """Strict error detection (when asked) and automatic threading for one stream's decoder."""
    cc = stream.codec_context
    if limits.strict_decode:
        cc.options = {**cc.options, "err_detect": "explode"}
    if stream.type == "video":
        cc.thread_type = "AUTO"


def iter_decoded(container: av.container.InputContainer, *streams,
                 seen: set[int] | None = None) -> Iterator[tuple[object, av.frame.Frame]]:
    """Yield (stream, frame) in decode order; demux/decode failures become MediaDecodeError naming the stream.

    `seen`, when given, collects the indices of streams that delivered a non-empty packet.
    """
    packets = container.demux(*streams)
    names = {s.index: stream_name(s) for s in streams}
    default = names[streams[0].index] if len(streams) == 1 else "container"
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as e:
            raise decode_error(default, container.name, e, "demux") from e
        if seen is not None and packet.size:
            seen.add(packet.stream.index)
        try:
            frames = packet.decode()
        except (av.FFmpegError, OSError) as e:
            where = f"packet pts={packet.pts}" if packet.pts is not None else "end of stream"
            raise decode_error(names.get(packet.stream.index, default), container.name, e, where) from e
        for frame in frames:
            yield packet.stream, frame


def _decode_first_frames(container: av.container.InputContainer, info: MediaInfo, limits: MediaLimits) -> int:
    """Decode the first frame of the probed streams; return the video display rotation (deg, counter-clockwise)."""
    wanted = [container.streams[x.index] for x in (info.video, info.audio) if x is not None]
    for s in wanted:
        configure_decoder(s, limits)
    pending = {s.index for s in wanted}
    with_data: set[int] = set()  # streams that had at least one non-empty packet
    rotation = 0
    for stream, frame in iter_decoded(container, *wanted, seen=with_data):
        if stream.index in pending:
            pending.discard(stream.index)
            if stream.type == "video":
                rotation = int(round(frame.rotation / 90.0)) * 90 % 360
        if not pending:
            return rotation
    empty = [stream_name(container.streams[i]) for i in sorted(pending) if i not in with_data]
    if empty:
        raise InvalidInputError(f"{info.path}: {', '.join(empty)}: expected at least one frame or sample, "
                                "found a zero-length stream")
    names = [stream_name(container.streams[i]) for i in sorted(pending)]
    raise MediaDecodeError(f"{info.path}: {', '.join(names)}: expected at least one decodable frame, found none "
                           "(truncated or corrupt file)")


def probe(path: str | os.PathLike, *, limits: MediaLimits = MediaLimits(), require_video: bool = False,
          require_audio: bool = False, decode_check: bool = True) -> MediaInfo:
    """Read streams, codecs, frame rate, duration and size, and check them against `limits`.

    Limits are checked from metadata first. Then, with `decode_check`, the first frame of the first
    video and audio stream is decoded (~0.2 s for 1080x1920 HEVC), which proves the streams decode and
    gives the display rotation (without it, `rotation` is 0 and width/height are the coded size).
    Raises InvalidInputError (missing/empty/text/not media, wrong stream types,
    over limits) or MediaDecodeError (truncated or corrupt media, e.g. an mp4 without moov).
    """
    with open_input(path, limits=limits) as container:
        p = Path(container.name)
        info = info_from_container(container, p)
        check_limits(info, limits, require_video=require_video, require_audio=require_audio)
        if decode_check:
            rotation = _decode_first_frames(container, info, limits)
            if rotation:
                info = info_from_container(container, p, rotation)
                check_limits(info, limits, require_video=require_video, require_audio=require_audio)
    return info


def decode_error(stream: str, path: str | os.PathLike, err: BaseException, where: str = "") -> MediaDecodeError:
    """A MediaDecodeError naming the stream, for failures while demuxing or decoding."""
    at = f" at {where}" if where else ""
    return MediaDecodeError(f"{path}: {stream}: expected decodable data{at}, found a decode error "
                            f"(truncated or corrupt file): {type(err).__name__}: {err}")
