"""Face alignment as the official AlignRestore does it: smoothed similarity transform, warp, Lanczos resize."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from engine.errors import InvalidInputError, expect
from engine.face.restore import resize_faces, restore_batch
from engine.face.warp import SourceScratch, as_matrices, warp_affine_hwc

TEMPLATE_BASE = ((17.0, 20.0), (58.0, 20.0), (37.5, 40.0))  # (x, y): left brow, right brow, nose at 256/2.8
CROP_BASE_WH = (75, 100)  # crop (w, h) before scaling by the ratio
TEMPLATE_RATIO_AT_256 = 2.8  # ratio = resolution / 256 * this: 2.8 at 256, 5.6 at 512
SMOOTH_PREV = 0.2  # bias = SMOOTH_PREV * previous + SMOOTH_NEW * current
SMOOTH_NEW = 0.8
ALIGN_FILL = 127.0  # kornia fill value outside the frame
SUPPORTED_RESOLUTIONS = (256, 512)
LANCZOS_TAPS = 8  # cv2 INTER_LANCZOS4: taps sx-3 .. sx+4, edge-replicated
LANCZOS_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS: uint8 resize weights are int16 in units of 1/2048
_S45 = 0.70710678118654752440084436210485
_LANCZOS_CS = ((1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1), (-_S45, _S45))


@dataclass(frozen=True)
class CropGeometry:
    """Template points and crop size for one model resolution."""

    resolution: int
    template: tuple[tuple[float, float], ...]  # 3 x (x, y) in crop pixels
    width: int
    height: int

    @classmethod
    def for_resolution(cls, resolution: int) -> "CropGeometry":
        expect(resolution in SUPPORTED_RESOLUTIONS, InvalidInputError, "resolution", SUPPORTED_RESOLUTIONS, resolution)
        ratio = resolution / 256 * TEMPLATE_RATIO_AT_256
        template = tuple((x * ratio, y * ratio) for x, y in TEMPLATE_BASE)
        return cls(resolution, template, int(CROP_BASE_WH[0] * ratio), int(CROP_BASE_WH[1] * ratio))


def _lanczos4_coeffs(x: np.float32) -> np.ndarray:
    """cv2 `interpolateLanczos4` (double sin/cos, float32 normalisation). [8] float32"""
    coeffs = np.zeros(LANCZOS_TAPS, np.float32)
    if x < np.finfo(np.float32).eps:
        coeffs[3] = 1
        return coeffs
    y0 = -(float(x) + 3) * math.pi * 0.25
    s0, c0 = math.sin(y0), math.cos(y0)
    total = np.float32(0)
    for i in range(LANCZOS_TAPS):
        y = -(float(x) + 3 - i) * math.pi * 0.25
        coeffs[i] = np.float32((_LANCZOS_CS[i][0] * s0 + _LANCZOS_CS[i][1] * c0) / (y * y))
        total = np.float32(total + coeffs[i])
    return coeffs * np.float32(np.float32(1) / total)


@lru_cache(maxsize=16)
def _lanczos4_taps(src_len: int, dst_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cv2's fixed-point INTER_LANCZOS4 taps along one axis: (source index [dst,8], int weight [dst,8]) int64."""
    scale = 1.0 / (dst_len / src_len)
    index = np.zeros((dst_len, LANCZOS_TAPS), np.int64)
    weight = np.zeros((dst_len, LANCZOS_TAPS), np.int64)
    for d in range(dst_len):
        fx = np.float32((d + 0.5) * scale - 0.5)
        sx = math.floor(fx)
        coeffs = _lanczos4_coeffs(np.float32(fx - np.float32(sx)))
        weight[d] = np.clip(np.rint(coeffs * np.float32(1 << LANCZOS_COEF_BITS)), -32768, 32767)
        index[d] = np.clip(sx - 3 + np.arange(LANCZOS_TAPS), 0, src_len - 1)
    return torch.from_numpy(index), torch.from_numpy(weight)


def lanczos4_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.resize(INTER_LANCZOS4) to size x size for uint8 [N,h,w,C] on any device, bit-exact (integer math)."""
    device = images.device
    ix, wx = (t.to(device) for t in _lanczos4_taps(images.shape[2], size))
    iy, wy = (t.to(device) for t in _lanczos4_taps(images.shape[1], size))
    pixels = images.long()
    rows = sum(pixels.index_select(2, ix[:, k]) * wx[:, k].view(1, 1, -1, 1) for k in range(LANCZOS_TAPS))
    out = sum(rows.index_select(1, iy[:, k]) * wy[:, k].view(1, -1, 1, 1) for k in range(LANCZOS_TAPS))
    shift = 2 * LANCZOS_COEF_BITS
    return ((out + (1 << (shift - 1))) >> shift).clamp(0, 255).to(torch.uint8)  # [N,R,R,C]


def check_landmarks(landmarks3: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate [N,3,2] (or [3,2]) finite, non-degenerate points; returns float32 CPU [N,3,2]."""
    if isinstance(landmarks3, torch.Tensor):
        landmarks3 = landmarks3.detach().cpu().numpy()
    points = torch.as_tensor(np.asarray(landmarks3, dtype=np.float32))
    if points.ndim == 2:
        points = points[None]
    expect(points.ndim == 3 and tuple(points.shape[1:]) == (3, 2), InvalidInputError, "landmarks3 shape",
           "[3,2] or [N,3,2]", tuple(points.shape))
    bad = ~torch.isfinite(points).all(dim=(1, 2))
    expect(not bool(bad.any()), InvalidInputError, "landmarks3 values", "finite numbers",
           f"NaN/Inf at index {bad.nonzero().flatten().tolist()}")
    if len(points) == 0:
        return points
    spread = points.flatten(1).std(dim=1)
    expect(bool((spread > 0).all()), InvalidInputError, "landmarks3", "three distinct points",
           f"coincident points at index {(spread <= 0).nonzero().flatten().tolist()}")
    return points


def similarity_transforms(landmarks3: torch.Tensor, template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsmoothed similarity transforms (source -> crop) and raw biases, batched.

    landmarks3 [N,3,2] f32, template [3,2] f32 -> (M [N,2,3] f32, bias [N,2] f32 = Dn[2] - Sn[2]).
    """
    src = landmarks3
    dst = template.expand_as(src)
    c_src, c_dst = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)  # [N,1,2]
    src0, dst0 = src - c_src, dst - c_dst
    s_src = src0.flatten(1).std(dim=1)[:, None, None]  # unbiased over the 6 numbers, [N,1,1]
    s_dst = dst0.flatten(1).std(dim=1)[:, None, None]
    src_n, dst_n = src0 / s_src, dst0 / s_dst
    cov = src_n.transpose(1, 2) @ dst_n  # [N,2,2]
    u, _, vh = torch.linalg.svd(cov)
    v = vh.transpose(1, 2)
    rot = v @ u.transpose(1, 2)
    flip = torch.linalg.det(rot) < 0
    if bool(flip.any()):
        v = v.clone()
        v[flip, :, -1] = -v[flip, :, -1]
        rot = v @ u.transpose(1, 2)
    scale = s_dst / s_src  # [N,1,1]
    lin = scale * rot  # [N,2,2]
    trans = c_dst.transpose(1, 2) - scale * (rot @ c_src.transpose(1, 2))  # [N,2,1]
    return torch.cat([lin, trans], dim=2), dst_n[:, 2] - src_n[:, 2]


class FaceAligner:
    """Warps faces into the official portrait crop and pastes generated faces back (AlignRestore semantics).

    Holds the smoothing state (p_bias) across `align`/`compute_matrices` calls, in call order; `reset()` clears it.
    """

    def __init__(self, resolution: int, device: str | torch.device = "cpu"):
        self.geometry = CropGeometry.for_resolution(resolution)
        self.resolution = resolution
        self.device = torch.device(device)
        self._template = torch.tensor(self.geometry.template, dtype=torch.float32)  # [3,2]
        self.p_bias: np.ndarray | None = None  # [2] float32, None before the first frame
        self._scratch = SourceScratch()  # the warp's float source buffer, reused frame after frame

    @property
    def crop_size(self) -> tuple[int, int]:
        """(w, h) of the aligned crop: (420, 560) at 512, (210, 280) at 256."""
        return self.geometry.width, self.geometry.height

    def reset(self) -> None:
        """Forget the smoothing state (the official pipeline does this once per call)."""
        self.p_bias = None

    def compute_matrices(self, landmarks3: np.ndarray | torch.Tensor) -> np.ndarray:
        """Smoothed source->crop matrices for consecutive frames. [N,3,2] (or [3,2]) -> [N,2,3] float32."""
        points = check_landmarks(landmarks3)
        if len(points) == 0:
            return np.zeros((0, 2, 3), np.float32)
        matrices, biases = similarity_transforms(points, self._template)
        biases = biases.numpy()
        out = matrices.numpy().copy()
        for i in range(len(out)):  # the recurrence over frames; 2 numbers per frame
            bias = biases[i] if self.p_bias is None else SMOOTH_PREV * self.p_bias + SMOOTH_NEW * biases[i]
            self.p_bias = bias.astype(np.float32)
            out[i, :, 2] += self.p_bias
        return out

    def align_batch(self, frames: torch.Tensor, matrices: np.ndarray | torch.Tensor, *,
                    whole_frame: bool = False) -> torch.Tensor:
        """Warp frames [N,H,W,3] uint8 with matrices [N,2,3] -> crops [N,h,w,3] uint8 (truncated, fill 127).

        Only the part of each frame the crop samples is read; `whole_frame=True` converts the whole frame to
        float first, as the official warp does (reference path for tests and benchmarks: the same crops)."""
        expect(frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.uint8, InvalidInputError,
               "frames", "uint8 [N,H,W,3]", f"{frames.dtype} {tuple(frames.shape)}")
        mats = as_matrices(matrices)
        expect(len(mats) == len(frames), InvalidInputError, "matrices count", len(frames), len(mats))
        frames = frames.to(self.device)
        crops = warp_affine_hwc(frames, mats.to(self.device), (self.geometry.height, self.geometry.width),
                                fill=ALIGN_FILL, whole_frame=whole_frame,
                                scratch=self._scratch)
        return crops.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # truncation, as the official `.to(uint8)`

    def align(self, frame: np.ndarray, landmarks3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame: (crop [h,w,3] uint8, matrix [2,3] float32); advances the smoothing state."""
        frame_t = _frame_tensor(frame)
        matrix = self.compute_matrices(landmarks3)
        return self.align_batch(frame_t[None], matrix)[0].cpu().numpy(), matrix[0]

    def resize_to_model(self, crop: np.ndarray) -> np.ndarray:
        """Crop [h,w,3] uint8 -> [R,R,3] uint8 with cv2 INTER_LANCZOS4 (the official squash)."""
        crop = np.ascontiguousarray(np.asarray(crop))
        expect(crop.ndim == 3 and crop.shape[2] == 3 and crop.dtype == np.uint8, InvalidInputError, "crop",
               "uint8 [h,w,3]", f"{crop.dtype} {crop.shape}")
        return cv2.resize(crop, (self.resolution, self.resolution), interpolation=cv2.INTER_LANCZOS4)

    def resize_batch_to_model(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops [N,h,w,3] uint8 -> [N,R,R,3] uint8 on the crops' device, equal to cv2 INTER_LANCZOS4.

        CPU: cv2 per crop (fastest there); other devices: the integer torch port (no host round trip).
        """
        expect(crops.ndim == 4 and crops.shape[-1] == 3 and crops.dtype == torch.uint8, InvalidInputError,
               "crops", "uint8 [N,h,w,3]", f"{crops.dtype} {tuple(crops.shape)}")
        if crops.device.type != "cpu":
            return lanczos4_resize(crops, self.resolution)
        return torch.from_numpy(np.stack([self.resize_to_model(c) for c in crops.numpy()]))

    def resize_to_crop(self, faces: torch.Tensor) -> torch.Tensor:
        """Decoded faces [N,3,R,R] float -> [N,3,h,w] (torchvision bicubic antialias resize, no clamp)."""
        return resize_faces(faces, (self.geometry.height, self.geometry.width))

    def restore_batch(self, frames: torch.Tensor, faces: torch.Tensor, matrices: np.ndarray | torch.Tensor, *,
                      region_only: bool = True, inplace: bool = False) -> torch.Tensor:
        """Paste faces ([N,3,R,R] or [N,3,h,w], float in about [-1,1]) into frames [N,H,W,3] uint8.

        Returns [N,H,W,3] uint8 on self.device; only each face's window is computed (see restore.py).
        """
        return restore_batch(frames.to(self.device), faces.to(self.device), matrices,
                             (self.geometry.height, self.geometry.width), region_only=region_only, inplace=inplace)

    def restore(self, frame: np.ndarray, face: torch.Tensor, matrix: np.ndarray) -> np.ndarray:
        """One frame: paste `face` [3,R,R] or [3,h,w] back with the official soft mask -> [H,W,3] uint8."""
        expect(isinstance(face, torch.Tensor) and face.ndim == 3 and face.shape[0] == 3, InvalidInputError,
               "face", "float tensor [3,h,w]", getattr(face, "shape", type(face)))
        out = self.restore_batch(_frame_tensor(frame)[None], face[None], np.asarray(matrix).reshape(1, 2, 3))
        return out[0].cpu().numpy()


def _frame_tensor(frame: np.ndarray) -> torch.Tensor:
    frame = np.asarray(frame)
    expect(frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8, InvalidInputError, "frame",
           "uint8 [H,W,3]", f"{frame.dtype} {frame.shape}")
    return torch.from_numpy(np.ascontiguousarray(frame))
