"""Batched bilinear affine warp with kornia 0.8 `warp_affine` semantics (align_corners=True), on any torch device.

kornia maps the pixel matrix M into normalised coordinates (fp32 3x3 chain), inverts it, builds an affine grid and
calls `grid_sample`; `padding_mode="fill"` adds `(1 - sample(ones)) * fill`. This module repeats that chain, but
computes the grid element-wise for any sub-window of the destination (each value depends only on its pixel, so a
window gives exactly the full warp's values there) and then calls the same `grid_sample`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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


def warp_affine_hwc(
    src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], *, fill: float | None = None,
) -> torch.Tensor:
    """kornia `warp_affine(src, M, dsize=(h, w), bilinear, align_corners=True)` for HWC images.

    src [N,H,W,C] (uint8 or float) -> [N,C,h,w] f32 (planar); `fill=None` is zero padding, a number is
    padding_mode="fill". One image at a time, so only one float copy of a (large) frame exists at once.
    """
    n, height, width, _ = src.shape
    zeros = torch.zeros(n, dtype=torch.long, device=src.device)
    gx, gy = normalized_grid(matrix.to(src.device), (height, width), dsize, zeros, zeros, dsize)  # [N,h,w]
    out = [grid_sample_fill(src[i].permute(2, 0, 1)[None], gx[i:i + 1], gy[i:i + 1], fill)[0] for i in range(n)]
    return torch.cat(out)
