"""Fidelity against a reference run: PSNR / SSIM of the frame and the mouth region, temporal flicker."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.errors import InvalidInputError

DATA_RANGE = 255.0
MAX_PSNR_DB = 100.0  # reported for identical images (finite for JSON)
SSIM_WINDOW = 11  # Gaussian window side (Wang et al. 2004)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# mouth region as fractions of the face box (x1, y1, x2, y2): lower half, central 70 %
MOUTH_BOX_FRACTIONS = (0.15, 0.5, 0.85, 1.0)


def psnr_from_mse(mse: float, data_range: float = DATA_RANGE) -> float:
    return MAX_PSNR_DB if mse <= 0 else min(MAX_PSNR_DB, 10 * math.log10(data_range**2 / mse))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    _check_pair(a, b)
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), data_range)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM over pixels and channels: Gaussian 11x11 sigma 1.5 window, population statistics,
    border of 5 px excluded (float32 statistics: within 1e-5 of a float64 computation)."""
    _check_pair(a, b)
    half = SSIM_WINDOW // 2
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise InvalidInputError(f"SSIM: expected images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, found {a.shape}")
    x, y = a.astype(np.float32), b.astype(np.float32)

    def blur(img: np.ndarray) -> np.ndarray:
        out = cv2.GaussianBlur(img, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
        return out[half:-half, half:-half]

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    mx2, my2, mxy = mx * mx, my * my, mx * my
    vx, vy, cxy = blur(x * x) - mx2, blur(y * y) - my2, blur(x * y) - mxy
    s = ((2 * mxy + c1) * (2 * cxy + c2)) / ((mx2 + my2 + c1) * (vx + vy + c2))
    return float(s.mean(dtype=np.float64))


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.size == 0:
        raise InvalidInputError(f"fidelity: expected two images of one non-empty shape, found {a.shape} and {b.shape}")


def mouth_region(face_box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (x1,y1,x2,y2) of the mouth region of a face box, clamped to the frame."""
    x1, y1, x2, y2 = face_box
    fx1, fy1, fx2, fy2 = MOUTH_BOX_FRACTIONS
    w, h = x2 - x1, y2 - y1
    box = (int(round(x1 + fx1 * w)), int(round(y1 + fy1 * h)), int(round(x1 + fx2 * w)), int(round(y1 + fy2 * h)))
    return (min(max(box[0], 0), width), min(max(box[1], 0), height),
            min(max(box[2], 0), width), min(max(box[3], 0), height))  # fmt: skip


@dataclass(frozen=True)
class FidelityResult:
    frames: int
    psnr_frame: float  # dB, from the clip's mean squared error
    ssim_frame: float | None  # mean over frames (None when SSIM is off)
    psnr_mouth: float | None  # None when no frame had a face box
    ssim_mouth: float | None
    flicker_mouth: float | None  # mean |mouth_t - mouth_{t-1}| of the run (0..255)
    flicker_mouth_reference: float | None  # the same for the reference
    mouth_frames: int  # frames that had a face box


@dataclass
class FidelityAccumulator:
    """Streams (run, reference, face box) frame pairs; O(1) memory in the clip length."""

    compute_ssim: bool = True
    _frames: int = 0
    _sq_frame: float = 0.0
    _ssim_frame: float = 0.0
    _sq_mouth: float = 0.0
    _px_mouth: int = 0
    _mouth_frames: int = 0
    _ssim_mouth: list[float] = field(default_factory=list)
    _flicker: list[float] = field(default_factory=list)
    _flicker_ref: list[float] = field(default_factory=list)
    _previous: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, run: np.ndarray, reference: np.ndarray, face_box=None) -> None:
        """run, reference [H,W,3] uint8; face_box (x1,y1,x2,y2) or None (no face in this frame)."""
        _check_pair(run, reference)
        diff = run.astype(np.float64) - reference.astype(np.float64)
        self._sq_frame += float(np.mean(diff**2))
        if self.compute_ssim:
            self._ssim_frame += ssim(run, reference)
        self._frames += 1
        if face_box is not None:
            x1, y1, x2, y2 = mouth_region(face_box, run.shape[1], run.shape[0])
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                self._sq_mouth += float(np.sum(diff[y1:y2, x1:x2] ** 2))
                self._px_mouth += diff[y1:y2, x1:x2].size
                self._mouth_frames += 1
                if self.compute_ssim and min(x2 - x1, y2 - y1) >= SSIM_WINDOW:
                    self._ssim_mouth.append(ssim(run[y1:y2, x1:x2], reference[y1:y2, x1:x2]))
                if self._previous is not None:
                    prev_run, prev_ref = self._previous
                    self._flicker.append(_mean_abs(run[y1:y2, x1:x2], prev_run[y1:y2, x1:x2]))
                    self._flicker_ref.append(_mean_abs(reference[y1:y2, x1:x2], prev_ref[y1:y2, x1:x2]))
        self._previous = (run, reference) if face_box is not None else None

    def result(self) -> FidelityResult:
        if self._frames == 0:
            raise InvalidInputError("fidelity: expected at least one frame pair, found none")
        mouth = self._px_mouth > 0
        return FidelityResult(
            frames=self._frames,
            psnr_frame=psnr_from_mse(self._sq_frame / self._frames),
            ssim_frame=self._ssim_frame / self._frames if self.compute_ssim else None,
            psnr_mouth=psnr_from_mse(self._sq_mouth / self._px_mouth) if mouth else None,
            ssim_mouth=float(np.mean(self._ssim_mouth)) if self._ssim_mouth else None,
            flicker_mouth=float(np.mean(self._flicker)) if self._flicker else None,
            flicker_mouth_reference=float(np.mean(self._flicker_ref)) if self._flicker_ref else None,
            mouth_frames=self._mouth_frames,
        )


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))
