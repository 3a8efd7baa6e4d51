"""Load the audio track of any container as float32 mono at 16 kHz, the way the official Whisper path does.

Every input goes through FFmpeg's resampler (PyAV AudioResampler) to signed 16-bit mono at the
target rate, and is returned as int16 / 32768 (float32), the official `ffmpeg ... -f s16le -ac 1
-ar 16000` load. A 16 kHz mono s16 WAV therefore comes back bit-for-bit. Channels are downmixed
with FFmpeg's default matrix.

Length policy (R7, R8): the result has the decoded duration at the new rate, N * rate / source_rate
samples within one sample. Codec padding at the end (an AAC or MP3 frame's tail) is trimmed to the
stream's declared duration when the excess is at most one codec frame; MP4 files state that
duration to the container's movie timescale (1 ms by default, so <= 16 samples at 16 kHz; exact
for files written by VideoWriter). Leading silence is not inserted when the audio stream starts
after the video (MediaInfo.audio.start_s says by how much).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass

import av
import numpy as np

from engine.constants import SAMPLE_RATE
from engine.errors import InvalidInputError, MediaDecodeError, expect
from engine.media.probe import MediaLimits, configure_decoder, iter_decoded, open_input, probe, stream_name

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0  # int16 -> float: x / 32768, the official Whisper load
FLOAT_SAMPLE_FORMATS = frozenset({"flt", "fltp", "dbl", "dblp"})
TRUNCATION_TOLERANCE = 0.05  # decoded audio may fall this fraction short of the declared duration ...
TRUNCATION_TOLERANCE_S = 0.02  # ... or this many seconds, or two codec frames, whichever is largest
WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data-chunk sizes written by streaming encoders that did not finish


FLOAT_PEAK_TOLERANCE = 1e-6  # float32 rounding of a full-scale sample


def check_float_samples(array: np.ndarray, what: str = "audio chunk") -> np.ndarray:
    """The one check of float speech given as an array (SDK calls and streaming sessions alike): finite and
    within [-1, 1], as every decoder delivers it; int16 values or a wrong gain passed as float are refused."""
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{what}: expected finite samples, found NaN or Inf")
    if array.size and np.abs(array).max() > 1.0 + FLOAT_PEAK_TOLERANCE:
        raise InvalidInputError(
            f"{what}: expected float32 samples in [-1, 1], found peak {float(np.abs(array).max()):.3f}")
    return array


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples as int16, the inverse of the x / 32768 load (int16 speech comes back exact); values past full
    scale (a resampler's overshoot) are clipped, never wrapped around."""
    return np.clip(np.round(samples * INT16_SCALE), -32768, 32767).astype(np.int16)


def load_audio(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE,
               limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Return the first audio stream of `path` as float32 mono [S] at `sample_rate`: load_pcm16(...) / 32768.

    Raises InvalidInputError for no audio stream, limits, NaN/Inf samples or zero samples, and
    MediaDecodeError (naming the stream) for truncated or corrupt data.
    """
    pcm = load_pcm16(path, sample_rate=sample_rate, limits=limits)
    return pcm.astype(np.float32) / np.float32(INT16_SCALE)


def load_pcm16(path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE,
               limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """The first audio stream as int16 mono [S] at `sample_rate` (`ffmpeg -ac 1 -ar 16000 -f s16le`); see load_audio."""
    expect(isinstance(sample_rate, int) and limits.min_sample_rate <= sample_rate <= limits.max_sample_rate,
           InvalidInputError, "sample_rate", f"an int in {limits.min_sample_rate}..{limits.max_sample_rate}",
           sample_rate)
    info = probe(path, limits=limits, require_audio=True, decode_check=False)
    a = info.audio
    options = _wav_options(info.path, a) if info.format == "wav" else {}
    with open_input(path, limits=limits, options=options) as container:
        stream = container.streams[a.index]
        configure_decoder(stream, limits)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        decoded = 0  # samples at the source rate
        for _, frame in iter_decoded(container, stream):
            if frame.format.name in FLOAT_SAMPLE_FORMATS:
                _check_finite(frame, path, stream)
            decoded += frame.samples
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        codec_frame = stream.codec_context.frame_size or 0
        _check_complete(decoded, a, codec_frame, path)
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)  # [S] int16
    pcm = _trim_codec_padding(pcm, a.duration_s, codec_frame, a.sample_rate, sample_rate)
    expect(pcm.size > 0, InvalidInputError, f"{path}: {a.name}", "at least one audio sample",
           "zero-length audio")
    return pcm


def _check_finite(frame: av.AudioFrame, path, stream) -> None:
    samples = frame.to_ndarray()
    if not np.isfinite(samples).all():
        t = float(frame.time) if frame.time is not None else float("nan")
        raise InvalidInputError(f"{path}: {stream_name(stream)}: expected finite samples, found NaN/Inf "
                                f"in the frame at {t:.3f} s")


def _check_complete(decoded: int, a, codec_frame: int, path) -> None:
    """MediaDecodeError when the stream ends well before its declared duration (truncated file, R1)."""
    declared = a.duration_s * a.sample_rate
    tolerance = max(TRUNCATION_TOLERANCE * declared, TRUNCATION_TOLERANCE_S * a.sample_rate, 2 * codec_frame)
    if a.duration_s > 0 and declared - decoded > tolerance:
        raise MediaDecodeError(f"{path}: {a.name}: expected {a.duration_s:.3f} s of audio as declared, found "
                               f"{decoded / a.sample_rate:.3f} s (truncated file)")


def _wav_options(path: str, a) -> dict[str, str]:
    """Demuxer options after comparing a WAV's data-chunk size with the file.

    Cut short: MediaDecodeError (the samples are gone). Longer than declared, with bytes after the
    data chunk that are not WAV chunks (a writer that died before fixing the header): read every
    sample present (`ignore_length`) and say so, instead of silently dropping the tail of the speech.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return {}
        total = os.fstat(f.fileno()).st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return {}
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"data":
                present = total - f.tell()
                if size in WAV_UNKNOWN_SIZES:
                    return {}
                if present < size:
                    raise MediaDecodeError(f"{path}: {a.name}: expected {size} bytes of samples as the WAV "
                                           f"header declares, found {present} (truncated file)")
                after = f.tell() + size + (size & 1)
                if after < total and not _chunks_fill(f, after, total):
                    log.warning("%s: %s: the WAV header declares %d bytes of samples but %d follow, not as WAV "
                                "chunks; reading all of them", path, a.name, size, present)
                    return {"ignore_length": "1"}
                return {}
            f.seek(size + (size & 1), os.SEEK_CUR)


def _chunks_fill(f, start: int, total: int) -> bool:
    """True when the bytes from `start` to the end of the file are well-formed RIFF chunks (LIST, id3, ...)."""
    pos = start
    while pos + 8 <= total:
        f.seek(pos)
        chunk = f.read(8)
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if not all(32 <= b < 127 for b in kind) or pos + 8 + size > total:
            return False
        pos += 8 + size + (size & 1)
    return total - pos <= 1


def _trim_codec_padding(pcm: np.ndarray, declared_s: float, codec_frame: int, source_rate: int,
                        rate: int) -> np.ndarray:
    """Drop the padded tail of the last codec frame, if the container declares a shorter duration."""
    if declared_s <= 0 or codec_frame <= 0:
        return pcm
    expected = round(declared_s * rate)
    excess = pcm.size - expected
    if 0 < excess <= math.ceil((codec_frame + 1) * rate / source_rate):
        return pcm[:expected]
    return pcm


# AAC's sampling rates (ISO 14496-3); a source at another rate is resampled to the nearest one above (48 kHz max)
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
MAX_OUTPUT_CHANNELS = 2  # more channels (5.1, 7.1) are downmixed to stereo by FFmpeg's matrix


@dataclass(frozen=True)
class SourceAudio:
    """A speech file's own audio, for the output: float32 planar samples [C, S] at `sample_rate`."""

    samples: np.ndarray  # [C, S] float32 in [-1, 1]
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def layout(self) -> str:
        return "mono" if self.channels == 1 else "stereo"


def load_source_audio(path: str | os.PathLike, *, seconds: float, limits: MediaLimits = MediaLimits()) -> SourceAudio:
    """The first audio stream of `path` at its own rate and channels (up to stereo), trimmed or padded with
    silence to exactly `seconds` (the output video's length): what the listener hears, where load_audio's
    16 kHz mono is what the model hears. A rate AAC cannot carry goes to the next AAC rate (48 kHz at most)."""
    info = probe(path, limits=limits, require_audio=True, decode_check=False)
    a = info.audio
    channels = min(max(a.channels, 1), MAX_OUTPUT_CHANNELS)
    rate = a.sample_rate if a.sample_rate in AAC_SAMPLE_RATES else min(
        [r for r in AAC_SAMPLE_RATES if a.sample_rate <= r <= 48000] or [48000])
    options = _wav_options(info.path, a) if info.format == "wav" else {}
    with open_input(path, limits=limits, options=options) as container:
        stream = container.streams[a.index]
        configure_decoder(stream, limits)
        resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=rate)
        chunks: list[np.ndarray] = []
        for _, frame in iter_decoded(container, stream):
            if frame.format.name in FLOAT_SAMPLE_FORMATS:
                _check_finite(frame, path, stream)
            chunks.extend(out.to_ndarray().reshape(channels, -1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(channels, -1) for out in resampler.resample(None))
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)  # [C, S]
    target = max(1, round(seconds * rate))
    if samples.shape[1] >= target:
        samples = samples[:, :target]
    else:  # speech shorter than the video: silence after it, so the track covers every frame
        samples = np.pad(samples, ((0, 0), (0, target - samples.shape[1])))
    return SourceAudio(np.ascontiguousarray(samples, dtype=np.float32), rate)
