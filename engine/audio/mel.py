"""Whisper log-mel spectrogram with the official formula and order of operations (whole clip, global max).

The result matches the official fixture within 2e-5 (measured 1.25e-5), not bit for bit: torch's CPU FFT
rounds differently from the library the fixture was made with (an fp64 FFT is 1.17e-5 from the fixture).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from engine.constants import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE
from engine.errors import InvalidInputError, expect

# Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0

LOG_FLOOR = 1e-10  # clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below the global maximum
MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding needs more samples than the pad width


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, _F_SP * mel)


def slaney_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) (slaney scale + slaney norm) -> float32 [n_mels, n_fft//2+1].

    Reproduces librosa's float32 rounding (triangles stored in float32, then scaled by the float64
    norm), which makes it bit-identical to whisper's bundled `mel_filters.npz`.
    """
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # [n_fft//2+1]
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))  # [n_mels+2]
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)  # [n_mels+2, bins]
    lower = -ramps[:n_mels] / widths[:n_mels, None]
    upper = ramps[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    norm = 2.0 / (mel_hz[2:] - mel_hz[:n_mels])  # slaney: constant energy per band
    return (triangles * norm[:, None]).astype(np.float32)


@lru_cache(maxsize=1)
def _mel_filters_tensor() -> torch.Tensor:
    return torch.from_numpy(slaney_mel_filters())  # [80, 201] f32


def as_samples(samples: torch.Tensor | np.ndarray, *, min_samples: int = MIN_SAMPLES) -> torch.Tensor:
    """Validate mono float audio and return it as a contiguous float32 CPU tensor [S]."""
    if isinstance(samples, np.ndarray):
        expect(samples.dtype.kind == "f", InvalidInputError, "audio sample dtype", "floating point", samples.dtype)
        samples = torch.from_numpy(samples)
    expect(isinstance(samples, torch.Tensor), InvalidInputError, "audio samples", "torch.Tensor or numpy array",
           type(samples).__name__)
    expect(samples.dtype.is_floating_point, InvalidInputError, "audio sample dtype", "floating point", samples.dtype)
    expect(samples.ndim == 1, InvalidInputError, "audio shape", "mono [S]", tuple(samples.shape))
    expect(samples.numel() >= min_samples, InvalidInputError, "audio length",
           f">= {min_samples} samples at {SAMPLE_RATE} Hz", samples.numel())
    samples = samples.detach().to("cpu", torch.float32).contiguous()
    bad = int((~torch.isfinite(samples)).sum())
    expect(bad == 0, InvalidInputError, "audio samples", "finite values", f"{bad} NaN/Inf samples")
    return samples


def log_mel_spectrogram(samples: torch.Tensor | np.ndarray) -> torch.Tensor:
    """16 kHz mono float samples [S] -> normalised log-mel [80, S // 160] float32 on CPU.

    Whole clip at once: the dynamic-range floor uses the global maximum of the clip (non-causal).
    """
    audio = as_samples(samples)  # [S]
    window = torch.hann_window(N_FFT)  # periodic
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)  # [201, S//160 + 1]
    power = stft[:, :-1].abs() ** 2  # [201, M]
    mel = _mel_filters_tensor() @ power  # [80, M]
    log_mel = torch.clamp(mel, min=LOG_FLOOR).log10()
    log_mel = torch.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE)
    return (log_mel + 4.0) / 4.0
