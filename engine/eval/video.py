"""Media reading for the evaluator: 25 fps RGB frames and 16 kHz int16 mono audio via PyAV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import InvalidInputError, MediaDecodeError

FPS_TOLERANCE = 0.01  # relative


def _open(path: str | Path):
    import av

    if not Path(path).is_file():
        raise InvalidInputError(f"media: expected a file, found nothing at {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InvalidInputError(f"{path}: expected a media container, found {exc}") from exc


def iter_rgb_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decoded frames [H,W,3] uint8 RGB of a 25 fps video (the engine's output rate)."""
    import av

    container = _open(path)
    with container:
        if not container.streams.video:
            raise InvalidInputError(f"{path}: expected a video stream, found none")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        if abs(rate - FPS) > FPS * FPS_TOLERANCE:
            raise InvalidInputError(f"{path}: expected a {FPS} fps video (engine output), found {rate:.3f} fps")
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(f"{path}: video stream: expected decodable frames, found {exc}") from exc


def load_audio_int16(path: str | Path) -> np.ndarray:
    """First audio stream resampled to 16 kHz mono s16 (like `ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`)."""
    import av

    container = _open(path)
    with container:
        if not container.streams.audio:
            raise InvalidInputError(f"{path}: expected an audio stream, found none")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(f"{path}: audio stream: expected decodable samples, found {exc}") from exc
    samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise InvalidInputError(f"{path}: expected audio samples, found an empty audio stream")
    return samples
