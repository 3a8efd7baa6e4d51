"""Encode H.264 + AAC into MP4 frame by frame, atomically: nothing appears at the target unless close() succeeds.

- Video: libx264, yuv420p, constant frame rate with explicit pts (frame k at k / fps). The RGB -> YUV
  conversion is FFmpeg's default (BT.601, untagged), the same as the official imageio/ffmpeg writer,
  so decoding with iter_video_frames inverts it. yuv420p needs even sizes: an odd width or height is
  padded by repeating the last column or row (the file is then 1 px larger; `encoded_size` says so).
  `size=(w, h)` scales on encode instead of keeping the input resolution.
- Audio: float32 samples, mono [S] or planar [C, S] with C = 1 or 2 (the speech file's own channels, see
  engine.media.audio.load_source_audio), FFmpeg's native AAC encoder in 1024-sample frames with pts. The
  encoder's priming delay is hidden by the MP4 edit list, and the movie timescale is set to the
  sample rate so the declared audio duration is exactly len(samples) / sample_rate. Audio is
  interleaved with video as frames arrive; audio is never cut to the video length (no -shortest).
- Atomicity (R23): the file is written to a unique hidden temporary name beside the target and
  renamed with os.replace only by close(). An exception inside `with`, abort(), or garbage
  collection before close() removes the temporary file.
"""

from __future__ import annotations

import os
import wave
import weakref
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import InvalidInputError, expect
from engine.media.audio import load_audio, to_pcm16
from engine.media.paths import check_output, is_write_failure, output_write_error, partial_path
from engine.media.probe import MediaInfo, MediaLimits, probe
from engine.media.video import as_rate, iter_video_frames

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
AAC_FRAME_SAMPLES = 1024  # samples per AAC frame
AAC_BIT_RATE = 96_000  # bit/s per channel
AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
MAX_CRF = 51


def temporary_path(target: Path) -> Path:
    """A unique hidden name in the target's directory, naming its owner (see engine.media.paths)."""
    return partial_path(target)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _discard(container, tmp: Path) -> None:
    """Close (ignoring errors) and delete a half-written output; also the weakref finalizer."""
    try:
        container.close()
    except Exception:  # noqa: BLE001 - best effort on an output we are throwing away
        pass
    _remove(tmp)


def _output_dir(path: str | os.PathLike) -> Path:
    """The checked target (directory exists and is writable, not a directory); stale .partial files removed."""
    return check_output(path, suffixes=None)


def _check_track(samples: np.ndarray, what: str) -> np.ndarray:
    """Mono [S] or planar [C, S] float samples -> contiguous float32 [C, S] (C in AUDIO_LAYOUTS)."""
    if isinstance(samples, np.ndarray) and samples.ndim == 2:
        expect(samples.shape[0] in AUDIO_LAYOUTS, InvalidInputError, f"{what} channels",
               f"one of {sorted(AUDIO_LAYOUTS)} ([C, S] planar)", samples.shape[0])
        return np.stack([_check_samples(c, what) for c in samples])
    return _check_samples(samples, what)[None, :]


def _check_samples(samples: np.ndarray, what: str) -> np.ndarray:
    expect(isinstance(samples, np.ndarray) and samples.ndim == 1, InvalidInputError, what,
           "a 1-D numpy array [S]", getattr(samples, "shape", type(samples).__name__))
    expect(np.issubdtype(samples.dtype, np.floating), InvalidInputError, f"{what} dtype", "float32", samples.dtype)
    expect(bool(np.isfinite(samples).all()), InvalidInputError, what, "finite samples", "NaN or Inf")
    return np.ascontiguousarray(samples, dtype=np.float32)


# Measured with PyAV 18's libx264 on 20-frame clips at crf 18: with x264's default lookahead threading every
# encode of the same frames gives other bytes (decoded pixels up to 74 levels apart). One lookahead thread makes
# encodes repeatable (frame threads still use every core): identical bytes every time for widths that are a
# multiple of 16; for other widths the first encode of a size in a process can still differ from the later
# ones (x264 itself; threads=1 does not change it). A second `engine run` (a new process) repeats the first.
X264_DETERMINISTIC = "lookahead-threads=1"


class AtomicOutput:
    """What every output writer shares: `self._finalizer` (a weakref.finalize that discards the temporary files)
    makes `abort()` idempotent, and a `with` block closes on success and aborts on an error."""

    _finalizer: weakref.finalize

    def close(self) -> Path:  # noqa: D102 - each writer finishes its own file
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the output: close what is open and delete the temporary files. Safe to call twice."""
        self._finalizer()

    def _commit(self, finish: Callable[[], None], tmp: Path) -> None:
        """Run `finish` (flush, mux, close the file at `tmp`), then rename `tmp` onto `self.path`. On any error the
        output is aborted (nothing at the target), and a failed write (full disk, ...) becomes OutputWriteError."""
        try:
            finish()
            os.replace(tmp, self.path)
        except OSError as e:
            self.abort()
            if is_write_failure(e):
                raise output_write_error(self.path, e) from e
            raise
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._finalizer.alive:
            self.close()


class VideoWriter(AtomicOutput):
    """MP4 writer: `with VideoWriter(path, w, h, audio=samples) as w: w.write(rgb)`; see the module docstring."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, *, fps: float | Fraction = FPS,
                 crf: int = 18, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE,
                 preset: str = "medium", size: tuple[int, int] | None = None, with_audio: bool = False,
                 faststart: bool = True) -> None:
        self.path = _output_dir(path)
        for name, value in (("width", width), ("height", height)):
            expect(isinstance(value, int) and value > 0, InvalidInputError, name, "a positive int", value)
        expect(isinstance(crf, int) and 0 <= crf <= MAX_CRF, InvalidInputError, "crf", f"an int in 0..{MAX_CRF}", crf)
        expect(preset in X264_PRESETS, InvalidInputError, "preset", f"one of {X264_PRESETS}", preset)
        expect(isinstance(sample_rate, int) and sample_rate > 0, InvalidInputError, "sample_rate", "a positive int",
               sample_rate)
        if size is not None:
            expect(len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size), InvalidInputError, "size",
                   "(width, height) positive ints", size)
        self.width, self.height = width, height
        self.rate = as_rate(fps)
        self.sample_rate = sample_rate
        out_w, out_h = size or (width, height)
        self.encoded_size = (out_w + out_w % 2, out_h + out_h % 2)  # yuv420p needs even sizes
        self._pad_odd = size is None and bool(width % 2 or height % 2)  # else the scaler reaches encoded_size
        self._pending = np.zeros((1, 0), np.float32) if audio is None else _check_track(audio, "audio")  # [C, n]
        expect(audio is None or self._pending.size > 0, InvalidInputError, "audio", "at least one sample or None",
               "an empty array")
        self.audio_layout = AUDIO_LAYOUTS[self._pending.shape[0]]
        self._streaming_audio = audio is None and with_audio
        self._audio_pts = 0
        self.frames_written = 0

        self._tmp = temporary_path(self.path)
        options = {"movflags": "+faststart"} if faststart else {}
        has_audio = audio is not None or with_audio
        if has_audio:
            options["movie_timescale"] = str(sample_rate)  # exact elst durations for the audio track
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4", options=options)
        except (av.FFmpegError, OSError) as e:
            _remove(self._tmp)
            if is_write_failure(e):  # a full disk is not a bad directory
                raise output_write_error(self.path, e) from e
            raise InvalidInputError(f"{self.path}: expected a writable output directory, found: {e}") from e
        self._finalizer = weakref.finalize(self, _discard, self._container, self._tmp)
        try:
            self._video = self._container.add_stream("libx264", rate=self.rate, options={
                "crf": str(crf), "preset": preset, "x264-params": X264_DETERMINISTIC})
            self._video.width, self._video.height = self.encoded_size
            self._video.pix_fmt = "yuv420p"
            self._audio = None
            if has_audio:
                self._audio = self._container.add_stream("aac", rate=sample_rate)
                self._audio.layout = self.audio_layout
                self._audio.bit_rate = AAC_BIT_RATE * self._pending.shape[0]
            self._container.start_encoding()  # opens the encoders and creates the temporary file now
        except (av.FFmpegError, ValueError) as e:
            self.abort()
            if is_write_failure(e):  # 0 bytes free fails here: a full disk, not bad encoder settings
                raise output_write_error(self.path, e) from e
            raise InvalidInputError(f"{self.path}: expected encoder settings libx264/AAC accept, found "
                                    f"{self.encoded_size} at {self.rate} fps, audio {sample_rate} Hz: {e}") from e
        except BaseException:
            self.abort()
            raise

    # ----------------------------------------------------------------- writing
    def write(self, rgb: np.ndarray) -> None:
        """Encode one frame [height, width, 3] uint8 RGB at pts = frames_written / fps."""
        self._check_open()
        expect(isinstance(rgb, np.ndarray) and rgb.shape == (self.height, self.width, 3), InvalidInputError,
               "frame shape", f"({self.height}, {self.width}, 3)", getattr(rgb, "shape", type(rgb).__name__))
        expect(rgb.dtype == np.uint8, InvalidInputError, "frame dtype", "uint8", rgb.dtype)
        if self._pad_odd:
            rgb = np.pad(rgb, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        w, h = self.encoded_size
        frame = frame.reformat(width=w, height=h, format="yuv420p", interpolation="LANCZOS")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.rate
        self._mux(self._video.encode(frame))
        self.frames_written += 1
        if not self._streaming_audio:  # interleave the given track up to the video time
            self._encode_audio(until=int(self.frames_written / self.rate * self.sample_rate))

    def write_audio(self, samples: np.ndarray) -> None:
        """Append float32 mono samples (needs with_audio=True and no `audio=` track)."""
        self._check_open()
        expect(self._streaming_audio, InvalidInputError, "write_audio", "a writer made with with_audio=True and "
               "audio=None", "a writer without a streamed audio track")
        self._pending = np.concatenate([self._pending, _check_samples(samples, "audio")[None, :]], axis=1)
        self._encode_audio(until=None)

    def _encode_audio(self, until: int | None, final: bool = False) -> None:
        """Encode whole AAC frames of pending audio starting before `until` (all when None); the tail if final."""
        if self._audio is None:
            return
        while self._pending.shape[1] >= AAC_FRAME_SAMPLES or (final and self._pending.shape[1]):
            if until is not None and self._audio_pts >= until:
                return
            chunk = np.ascontiguousarray(self._pending[:, :AAC_FRAME_SAMPLES])  # [C, n]
            self._pending = self._pending[:, AAC_FRAME_SAMPLES:]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.audio_layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self._audio_pts
            frame.time_base = Fraction(1, self.sample_rate)
            self._audio_pts += chunk.shape[1]
            self._mux(self._audio.encode(frame))

    def _mux(self, packets) -> None:
        try:
            for packet in packets:
                self._container.mux(packet)
        except OSError as e:  # PyAV's av.error.OSError too: disk full, quota, file size limit, I/O error
            if not is_write_failure(e):
                raise
            self.abort()  # nothing partial is left, whatever the caller does next
            raise output_write_error(self.path, e) from e

    def _check_open(self) -> None:
        expect(self._finalizer.alive, InvalidInputError, f"VideoWriter({self.path})", "an open writer",
               "a closed or aborted writer")

    # ----------------------------------------------------------------- ending
    def close(self) -> Path:
        """Flush encoders, finish the MP4 and rename it onto the target. Returns the target path."""
        self._check_open()

        def finish() -> None:
            expect(self.frames_written > 0, InvalidInputError, f"VideoWriter({self.path})", "at least one frame",
                   "no frames written")
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._encode_audio(until=None, final=True)
                self._mux(self._audio.encode(None))
            self._container.close()  # writes the moov atom (and, with faststart, rewrites the file)

        self._commit(finish, self._tmp)
        self._finalizer.detach()
        return self.path



def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float mono samples as a 16-bit PCM WAV (round(x * 32768), clipped), atomically.

    x * 32768 is the inverse of load_audio, so samples of the form int16 / 32768 round-trip exactly
    (the same convention as soundfile's PCM_16 writer used by the official pipeline).
    """
    target = _output_dir(path)
    pcm = to_pcm16(_check_samples(samples, "samples")).astype("<i2", copy=False)
    tmp = temporary_path(target)
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
        os.replace(tmp, target)
    except OSError as e:
        _remove(tmp)
        if is_write_failure(e):
            raise output_write_error(target, e) from e
        raise
    except BaseException:
        _remove(tmp)
        raise
    return target


def cut_clip(src: str | os.PathLike, dst: str | os.PathLike, *, seconds: float, start: float = 0.0,
             fps: float = FPS, crf: int = 18, preset: str = "veryfast", size: tuple[int, int] | None = None,
             limits: MediaLimits = MediaLimits()) -> MediaInfo:
    """Re-encode [start, start + seconds) of `src` to an H.264/AAC mp4 at `fps`, audio as 16 kHz mono.

    Frames come from iter_video_frames (resampled by pts), so the clip has round(seconds * fps)
    frames when the source is long enough; the audio is load_audio(src) cut to the same span
    (or no audio track when src has none). Returns probe(dst). For end-to-end test fixtures.
    """
    expect(seconds > 0, InvalidInputError, "seconds", "> 0", seconds)
    info = probe(src, limits=limits, require_video=True)
    audio = None
    if info.audio is not None:
        samples = load_audio(src, limits=limits)
        audio = samples[round(start * SAMPLE_RATE): round((start + seconds) * SAMPLE_RATE)]
        audio = audio if audio.size else None
    frames = iter_video_frames(src, fps=fps, limits=limits, start_s=start, max_frames=round(seconds * fps))
    writer = None
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.rgb.shape[:2]
                writer = VideoWriter(dst, w, h, fps=fps, crf=crf, audio=audio, preset=preset, size=size)
            writer.write(frame.rgb)
        expect(writer is not None, InvalidInputError, f"{src}", f"video frames after {start} s", "none")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        frames.close()
    return probe(dst, limits=limits)
