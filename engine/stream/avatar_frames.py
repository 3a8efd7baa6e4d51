"""An avatar's frames, stored as H.264 in RGB and read back in ping-pong order at one decode per frame.

By default (qp 0) the encoding is lossless: decoding gives back the exact uint8
frames that were written. `crf` trades exactness for size (visually lossless
around crf 12, see `benchmarks/streaming.py`); RGB coding avoids any colour
conversion error either way. A key frame every `GOP` frames
makes random access cheap: forward reads decode one frame at a time, and the
reversed half of the ping-pong loop decodes each block of `GOP` frames once
(seek to its key frame, decode it, serve it backwards). Memory: `GOP` frames.
Each compressed frame's CRC-32 is recorded when the file is finished and checked
before it is decoded, so a damaged file gives a typed error, never wrong frames.

Measured on demo1 (1080x1920 phone video): about 1.1 MB per frame against 6.2 MB
raw (`benchmarks/streaming.py --parts avatar` writes the figure).
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.constants import FPS
from engine.errors import InvalidInputError, MediaDecodeError, expect
from engine.media.writer import X264_DETERMINISTIC  # the same encode twice gives the same bytes

log = logging.getLogger(__name__)

CODEC = "libx264rgb"
GOP = 8  # frames per key frame: the block a backward read decodes (8 frames of 1080p: 50 MB)
KEYFRAMES = f"keyint={GOP}:min-keyint={GOP}:scenecut=0"  # key frames exactly every GOP frames
LOSSLESS_OPTIONS = {"qp": "0", "preset": "ultrafast", "x264-params": KEYFRAMES}  # CAVLC: fastest lossless decode
MAX_CRF = 51
CONTAINER = "matroska"


def x264_options(crf: int | None) -> dict[str, str]:
    """Encoder options: lossless for crf None, else constant quality `crf` (no B-frames, so decode order is
    display order)."""
    if crf is None:
        return dict(LOSSLESS_OPTIONS)
    expect(isinstance(crf, int) and 0 <= crf <= MAX_CRF, InvalidInputError, "avatar frames crf",
           f"None (lossless) or an int in 0..{MAX_CRF}", crf)
    return {"crf": str(crf), "preset": "veryfast", "x264-params": f"{KEYFRAMES}:bframes=0:{X264_DETERMINISTIC}"}


def describe_coding(crf: int | None) -> str:
    return f"{CODEC} {'qp 0 (lossless)' if crf is None else f'crf {crf}'}, key frame every {GOP}"


class FrameFileWriter:
    """Appends uint8 frames [H,W,3] of one size to a file (lossless unless `crf`); `close()` finishes it."""

    def __init__(self, path: str | Path, *, crf: int | None = None) -> None:
        import av

        self.options = x264_options(crf)
        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w", format=CONTAINER)
        self._stream = None
        self.size: tuple[int, int] | None = None  # (H, W)
        self.count = 0
        self._closed = False

    def write(self, rgb: np.ndarray) -> None:
        import av

        if self._stream is None:
            self.size = rgb.shape[:2]
            self._stream = self._container.add_stream(CODEC, rate=FPS, options=self.options)
            self._stream.height, self._stream.width = self.size
            self._stream.pix_fmt = "rgb24"
        expect(rgb.shape[:2] == self.size, InvalidInputError, f"avatar frame {self.count} size", self.size,
               rgb.shape[:2])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        frame.time_base = Fraction(1, FPS)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and close the file (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()


def packet_checksums(path: str | Path, num_frames: int) -> np.ndarray:
    """CRC-32 of each frame's compressed bytes as stored, uint32 [T] (one demux pass, no decoding)."""
    import av

    crc = np.zeros(num_frames, np.uint32)
    seen = np.zeros(num_frames, bool)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.size:
                k = _index_of(packet)
                expect(0 <= k < num_frames, MediaDecodeError, f"avatar frames {path}: packet",
                       f"a frame in 0..{num_frames - 1}", k)
                crc[k], seen[k] = zlib.crc32(bytes(packet)), True
    expect(seen.all(), MediaDecodeError, f"avatar frames {path}", f"{num_frames} frames",
           f"{int(seen.sum())} frames")
    return crc


def _index_of(packet_or_frame) -> int:
    """Frame number from a packet's or frame's timestamp (frame k is at k / 25 s)."""
    return int(round(packet_or_frame.pts * packet_or_frame.time_base * FPS))


class FrameFileReader:
    """`get(s)` -> frame s [H,W,3] uint8 of a file written by `FrameFileWriter`, with a `GOP`-frame cache."""

    def __init__(self, path: str | Path, num_frames: int, size: tuple[int, int], checksums: np.ndarray) -> None:
        import av

        self.path = Path(path)
        self.num_frames = num_frames
        self.size = size
        self._checksums = checksums  # uint32 [T], see packet_checksums
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as exc:
            raise InvalidInputError(f"avatar frames {self.path}: expected an avatar frame file, found {exc}") from exc
        self._stream.thread_type = "AUTO"
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoded = None  # iterator of decoded frames from the current position
        self._next = None  # frame index the decoder yields next

    def get(self, s: int) -> np.ndarray:
        expect(0 <= s < self.num_frames, InvalidInputError, "avatar frame index", f"0..{self.num_frames - 1}", s)
        if s in self._cache:
            return self._cache[s]
        if s != self._next:
            self._seek(s - s % GOP)
        while self._next <= s:
            self._keep(self._next, self._decode_next())
        return self._cache[s]

    def _keep(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        while len(self._cache) > GOP:
            self._cache.popitem(last=False)

    def _seek(self, key: int) -> None:
        """Position the decoder on key frame `key` (a multiple of GOP)."""
        pts = int(Fraction(key, FPS) / self._stream.time_base)
        self._container.seek(pts, stream=self._stream, backward=True)
        self._decoded = self._decode_checked()
        self._next = None
        while self._next is None or self._next < key:  # a seek lands on the key frame at or before `key`
            frame = self._pull()
            self._next = _index_of(frame) + 1
            if self._next - 1 == key:
                self._keep(key, self._rgb(frame))
        if self._next - 1 > key:
            raise MediaDecodeError(f"avatar frames {self.path}: expected frame {key} after a seek, "
                                   f"found frame {self._next - 1}")

    def _decode_next(self) -> np.ndarray:
        if self._decoded is None:
            self._decoded = self._decode_checked()
            self._next = 0
        frame = self._pull()
        found = _index_of(frame)
        if found != self._next:
            raise MediaDecodeError(f"avatar frames {self.path}: expected frame {self._next}, found frame {found}")
        self._next += 1
        return self._rgb(frame)

    def _decode_checked(self):
        """Decoded frames from the demuxer's position; each packet's CRC-32 is checked first."""
        for packet in self._container.demux(self._stream):
            if packet.size:
                k = _index_of(packet)
                if not (0 <= k < self.num_frames) or zlib.crc32(bytes(packet)) != self._checksums[k]:
                    raise MediaDecodeError(f"avatar frames {self.path}: expected frame {k} as prepared "
                                           "(CRC-32 recorded), found different bytes (the file was changed "
                                           "or damaged; prepare the avatar again)")
            yield from packet.decode()

    def _pull(self):
        import av

        try:
            return next(self._decoded)
        except StopIteration:
            raise MediaDecodeError(f"avatar frames {self.path}: expected {self.num_frames} frames, "
                                   "found the file ends early (truncated?)") from None
        except av.FFmpegError as exc:
            raise MediaDecodeError(f"avatar frames {self.path}: expected decodable frames, found {exc}") from exc

    def _rgb(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        if rgb.shape[:2] != self.size:
            raise MediaDecodeError(f"avatar frames {self.path}: expected frames of {self.size}, found {rgb.shape[:2]}")
        return rgb

    def close(self) -> None:
        self._cache.clear()
        self._decoded = None
        self._container.close()
