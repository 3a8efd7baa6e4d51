"""Batched bilinear affine warp with kornia 0.8 `warp_affine` semantics (align_corners=True), on any torch device.

kornia maps the pixel matrix M into normalised coordinates (fp32 3x3 chain), inverts it, builds an affine grid and
calls `grid_sample`; `padding_mode="fill"` adds `(1 - sample(ones)) * fill`. This module repeats that chain, but
computes the grid element-wise for any sub-window of the destination (each value depends only on its pixel, so a
window gives exactly the full warp's values there) and then calls the same `grid_sample`.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_MARGIN = 2  # px of source kept around the taps a crop samples (see sampled_box)


def as_matrices(matrices) -> torch.Tensor:
    """numpy/tensor/list [N,2,3] or [2,3] -> float32 CPU tensor [N,2,3]."""
    if isinstance(matrices, torch.Tensor):
        return matrices.detach().float().cpu().reshape(-1, 2, 3)
    return torch.as_tensor(np.asarray(matrices, dtype=np.float32)).reshape(-1, 2, 3)


def _normal_transform_pixel(height: int, width: int, device, dtype=torch.float32) -> torch.Tensor:
    """kornia `normal_transform_pixel`: pixel -> [-1, 1] (align_corners=True). [3,3]"""
    eps = 1e-14
    mat = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]], device=device, dtype=dtype)
    mat[0, 0] = mat[0, 0] * 2.0 / (eps if width == 1 else width - 1.0)
    mat[1, 1] = mat[1, 1] * 2.0 / (eps if height == 1 else height - 1.0)
    return mat


def _homography(matrix: torch.Tensor) -> torch.Tensor:
    """[N,2,3] -> [N,3,3] with a last row (0, 0, 1)."""
    last = torch.zeros_like(matrix[:, :1, :])
    last[..., 2] = 1.0
    return torch.cat([matrix, last], dim=1)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """kornia `invert_affine_transform`: [N,2,3] -> [N,2,3] via a 3x3 inverse in fp32."""
    return torch.linalg.inv(_homography(matrix.float()))[:, :2, :]


def normalized_theta(matrix: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """kornia's `src_norm_trans_dst_norm[:, :2]` for a source->destination pixel matrix. [N,2,3] f32"""
    m3 = _homography(matrix.float())  # [N,3,3]
    src_norm = _normal_transform_pixel(*src_hw, device=m3.device)
    dst_norm = _normal_transform_pixel(*dst_hw, device=m3.device)
    dst_norm_from_src_norm = dst_norm @ (m3 @ torch.linalg.inv(src_norm))
    return torch.linalg.inv(dst_norm_from_src_norm)[:, :2, :]


def normalized_grid(
    matrix: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int], y0: torch.Tensor, x0: torch.Tensor,
    box_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """affine_grid's normalised source coordinates (gx, gy) [N,bh,bw] of destination pixels in per-image windows.

    y0, x0: [N] int64 window origins (inside the destination); box_hw: common window size.
    Each value depends only on its destination pixel, so any window gives the full warp's values.
    """
    theta = normalized_theta(matrix, src_hw, dst_hw)  # [N,2,3]
    device = theta.device
    (dst_h, dst_w), (bh, bw) = dst_hw, box_hw
    lin_x = torch.linspace(-1.0, 1.0, dst_w, device=device, dtype=torch.float32)  # affine_grid's base grid
    lin_y = torch.linspace(-1.0, 1.0, dst_h, device=device, dtype=torch.float32)
    xs = lin_x[x0[:, None] + torch.arange(bw, device=device)][:, None, :]  # [N,1,bw]
    ys = lin_y[y0[:, None] + torch.arange(bh, device=device)][:, :, None]  # [N,bh,1]
    t = theta[:, :, :, None, None]  # [N,2,3,1,1]
    gx = xs * t[:, 0, 0] + ys * t[:, 0, 1] + t[:, 0, 2]  # [N,bh,bw]
    gy = xs * t[:, 1, 0] + ys * t[:, 1, 1] + t[:, 1, 2]
    return gx, gy


def grid_sample_fill(
    src: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, fill: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's warp core on a float planar source [N,C,h,w] with F.grid_sample (exactly kornia's arithmetic).

    Returns (values [N,C,bh,bw], coverage [N,1,bh,bw] = the warp of a ones image, kornia's fill mask).
    """
    grid = torch.stack([gx, gy], dim=-1)  # [N,bh,bw,2]
    values = F.grid_sample(src.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ones = torch.ones((1, 1, 1, 1), device=src.device).expand(src.shape[0], 1, *src.shape[2:])  # no allocation
    coverage = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if fill is not None:
        values = values + (1.0 - coverage) * fill
    return values, coverage


def sampled_box(gx: torch.Tensor, gy: torch.Tensor, src_hw: tuple[int, int]) -> np.ndarray | None:
    """Per image, the source pixels bilinear sampling at grid (gx, gy) [N,h,w] can read: int64 [N,4] rows
    (y0, y1, x0, x1), half-open and clamped to the source, with a 2-pixel margin over the taps floor(i), floor(i)+1
    at i = (g + 1) / 2 * (size - 1) (the margin absorbs grid_sample's own float rounding of i). None when a grid
    value is not finite (then only the whole source is safe)."""
    height, width = src_hw
    lo_hi = torch.stack([gx.amin(dim=(1, 2)), gx.amax(dim=(1, 2)), gy.amin(dim=(1, 2)), gy.amax(dim=(1, 2))], dim=1)
    lo_hi = lo_hi.double().cpu().numpy()  # [N,4] one host read for the batch
    if not np.isfinite(lo_hi).all():
        return None
    x = (lo_hi[:, :2] + 1) / 2 * (width - 1)
    y = (lo_hi[:, 2:] + 1) / 2 * (height - 1)
    x0 = np.clip(np.floor(x[:, 0]) - SAMPLE_MARGIN, 0, width)
    x1 = np.clip(np.floor(x[:, 1]) + 2 + SAMPLE_MARGIN, 0, width)
    y0 = np.clip(np.floor(y[:, 0]) - SAMPLE_MARGIN, 0, height)
    y1 = np.clip(np.floor(y[:, 1]) + 2 + SAMPLE_MARGIN, 0, height)
    return np.stack([y0, np.maximum(y1, y0), x0, np.maximum(x1, x0)], axis=1).astype(np.int64)


class SourceScratch:
    """Float source buffers [1,H,W,C] kept between warps, one per thread and frame size (CPU only).

    A fresh 24 MB buffer per 1080x1920 frame costs more in page faults than the conversion itself; a
    reused one is already mapped. Owned by one aligner (one job), so it lives as long as the job.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, torch.Tensor] = {}  # thread id -> buffer

    def get(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if device.type != "cpu":  # the CUDA caching allocator already reuses its blocks
            return torch.empty((1, *shape), dtype=torch.float32, device=device)
        key = threading.get_ident()
        buffer = self._buffers.get(key)
        if buffer is None or tuple(buffer.shape[1:]) != tuple(shape):
            buffer = self._buffers[key] = torch.empty((1, *shape), dtype=torch.float32)
        return buffer


def _float_source(image: torch.Tensor, box: np.ndarray | None, scratch: SourceScratch | None = None) -> torch.Tensor:
    """image [H,W,C] as the float planar [1,C,H,W] `grid_sample` reads, converting only `box` (y0, y1, x0, x1).

    Outside the box the buffer is not written (it may hold an earlier frame's pixels or nothing): the sampler
    never reads there (see `sampled_box`), so the warp's values equal those from the whole converted image,
    bit for bit, at a fraction of the cost for a crop of a large frame.
    """
    if box is None:
        return image.permute(2, 0, 1)[None].float()
    y0, y1, x0, x1 = (int(v) for v in box)
    scratch = scratch or SourceScratch()
    buffer = scratch.get(tuple(image.shape), image.device)  # [1,H,W,C]
    buffer[0, y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return buffer.permute(0, 3, 1, 2)  # [1,C,H,W]


def warp_affine_hwc(
    src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], *, fill: float | None = None,
    whole_frame: bool = False, scratch: SourceScratch | None = None,
) -> torch.Tensor:
    """kornia `warp_affine(src, M, dsize=(h, w), bilinear, align_corners=True)` for HWC images.

    src [N,H,W,C] (uint8 or float) -> [N,C,h,w] f32 (planar); `fill=None` is zero padding, a number is
    padding_mode="fill". One image at a time, and only the part of each image the crop samples is converted to
    float (a face crop reads a few percent of a 1080x1920 frame); `whole_frame=True` converts every pixel
    (the reference path for tests and benchmarks; same values). `scratch` keeps the float buffer between calls.
    """
    n, height, width, _ = src.shape
    zeros = torch.zeros(n, dtype=torch.long, device=src.device)
    gx, gy = normalized_grid(matrix.to(src.device), (height, width), dsize, zeros, zeros, dsize)  # [N,h,w]
    boxes = None if whole_frame else sampled_box(gx, gy, (height, width))
    out = [grid_sample_fill(_float_source(src[i], None if boxes is None else boxes[i], scratch), gx[i:i + 1], gy[i:i + 1],
                            fill)[0] for i in range(n)]
    return torch.cat(out)
