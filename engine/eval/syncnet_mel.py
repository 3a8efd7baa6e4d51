"""StableSyncNet audio input: the Wav2Lip-style mel spectrogram (librosa 0.10 arithmetic, in numpy)."""

from __future__ import annotations

import math

import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import InvalidInputError

PREEMPHASIS = 0.97
N_FFT = 800  # = win_size
HOP = 200  # 80 mel columns per second
NUM_MELS = 80
FMIN = 55.0  # Hz
FMAX = 7600.0  # Hz
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_COLUMNS_PER_SECOND = SAMPLE_RATE / HOP  # 80.0
WINDOW_FRAMES = 16  # video frames per StableSyncNet window
WINDOW_COLUMNS = math.ceil(WINDOW_FRAMES / FPS * MEL_COLUMNS_PER_SECOND)  # 52 mel columns


def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    """lfilter([1, -k], [1], wav): y[n] = x[n] - k x[n-1], y[0] = x[0]; float64."""
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] -= k * x[:-1]
    return y


def stft_magnitude(y: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """|librosa.stft(y, n_fft, hop, win=n_fft)| with a periodic Hann window, center=True, zero padding.

    Returns [n_fft//2+1, 1 + len(y)//hop] float64.
    """
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    padded = np.pad(y, n_fft // 2, mode="constant")
    count = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count]  # [T, n_fft]
    return np.abs(np.fft.rfft(frames * window, axis=1)).T


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mel)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def slaney_mel_filters(
    sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = NUM_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm='slaney') -> [n_mels, n_fft//2+1] float32 (librosa's dtype)."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """wav [S] float in [-1,1] (int16/32768) at 16 kHz -> [80, 1 + S//200] float64 in [-4, 4]."""
    wav = np.asarray(wav)
    if wav.ndim != 1 or wav.size == 0 or not np.isfinite(wav).all():
        raise InvalidInputError(f"mel: expected finite mono samples [S>0], found shape {wav.shape}")
    magnitude = stft_magnitude(preemphasis(wav))
    mel = slaney_mel_filters() @ magnitude  # float32 basis . float64 -> float64
    db = 20 * np.log10(np.maximum(10 ** (MIN_LEVEL_DB / 20), mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def window_start_column(start_frame: int) -> int:
    """First mel column of the window for video frame `start_frame`: int(80 * s / 25)."""
    return int(MEL_COLUMNS_PER_SECOND * (start_frame / float(FPS)))


def mel_window(mel: np.ndarray, start_frame: int) -> np.ndarray:
    """mel [80,T] -> [1,80,52] window for 16 video frames starting at `start_frame`."""
    start = window_start_column(start_frame)
    if start + WINDOW_COLUMNS > mel.shape[1]:
        raise InvalidInputError(
            f"mel window at frame {start_frame}: expected columns up to {start + WINDOW_COLUMNS}, found {mel.shape[1]}"
        )
    return mel[None, :, start : start + WINDOW_COLUMNS]
