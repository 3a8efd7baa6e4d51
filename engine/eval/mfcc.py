"""MFCC exactly as `python_speech_features.mfcc(signal, 16000)` with its defaults, in numpy (float64)."""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.constants import SAMPLE_RATE

WIN_SECONDS = 0.025  # 400-sample frames
STEP_SECONDS = 0.01  # 160-sample hop -> 100 frames/s
NUM_CEP = 13
NUM_FILTERS = 26
NFFT = 512
PREEMPH = 0.97
CEP_LIFTER = 22


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595 * np.log10(1 + np.asarray(hz) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700 * (10 ** (np.asarray(mel) / 2595.0) - 1)


def mel_filterbank(nfilt: int = NUM_FILTERS, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters [nfilt, nfft//2+1] on FFT bins floor((nfft+1)*hz/sr), 0..sr/2 Hz."""
    mel_points = np.linspace(hz_to_mel(0), hz_to_mel(sample_rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mel_points) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """[N] -> [F,frame_len], F = 1 + ceil((N-frame_len)/step) (1 if N <= frame_len), last frame zero-padded."""
    n = len(signal)
    count = 1 if n <= frame_len else 1 + int(math.ceil((n - frame_len) / frame_step))
    padded = np.concatenate([signal, np.zeros(int((count - 1) * frame_step + frame_len) - n)])
    index = np.arange(frame_len)[None, :] + frame_step * np.arange(count)[:, None]
    return padded[index]  # rectangular window


def dct2_ortho(x: np.ndarray, keep: int) -> np.ndarray:
    """DCT-II with orthonormal scaling along the last axis, first `keep` coefficients."""
    n = x.shape[-1]
    k = np.arange(keep)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))  # [keep, n]
    scale = np.full(keep, math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return (x @ basis.T) * scale


def mfcc(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[N] samples (raw int16 values, no /32768) -> [F,13] float64 MFCC, c0 replaced by log frame energy."""
    signal = np.asarray(signal)
    emphasized = np.append(signal[0], signal[1:] - PREEMPH * signal[:-1]).astype(np.float64)
    frames = frame_signal(
        emphasized, _round_half_up(WIN_SECONDS * sample_rate), _round_half_up(STEP_SECONDS * sample_rate)
    )
    power = np.square(np.absolute(np.fft.rfft(frames, NFFT))) / NFFT  # [F, 257]
    eps = np.finfo(float).eps
    energy = np.sum(power, 1)
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(NUM_FILTERS, NFFT, sample_rate).T
    feat = np.where(feat == 0, eps, feat)
    cep = dct2_ortho(np.log(feat), NUM_CEP)
    cep *= 1 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(NUM_CEP) / CEP_LIFTER)
    cep[:, 0] = np.log(energy)
    return cep


def syncnet_cc(audio_int16: np.ndarray, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The evaluator's audio input: MFCC transposed to [13,F], as float32 [1,1,13,F]."""
    return torch.from_numpy(np.ascontiguousarray(mfcc(audio_int16, sample_rate).T)).float()[None, None]
