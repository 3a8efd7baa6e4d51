"""Batched bilinear affine warp with kornia 0.8 `warp_affine` semantics, on any torch device.

kornia (align_corners=True) maps the pixel matrix M into normalised coordinates, inverts it and samples with
`grid_sample`; this module repeats that arithmetic (fp32 3x3 chain, linspace grid, `(g + 1) * (size - 1) / 2`
unnormalisation, grid_sample's bilinear weights) but gathers the four taps itself, so that:
- the source can stay uint8 and HWC (no full-frame float copy, no permute),
- the destination can be any sub-window of the full output (values identical to the full warp, pixel for pixel),
- `padding_mode="fill"` is blended exactly like kornia: `sample(src) + (1 - sample(ones)) * fill`.
"""

from __future__ import annotations

import numpy as np
import torch

Box = tuple[int, int, int, int]  # (y0, x0, height, width) of a destination window


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


def source_coords(
    matrix: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int], y0: torch.Tensor, x0: torch.Tensor,
    box_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source pixel coordinates (ix, iy) [N,bh,bw] of destination pixels in per-image windows.

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
    src_h, src_w = src_hw
    ix = (gx + 1.0) * ((src_w - 1) / 2.0)  # grid_sample unnormalise, align_corners=True
    iy = (gy + 1.0) * ((src_h - 1) / 2.0)
    return ix, iy


def sample_bilinear(
    src: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, fill: float | None, *, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps of src at (ix, iy) [N,h,w]; zero outside (grid_sample, padding "zeros").

    src: [N,H,W,C] when channels_last (any dtype, e.g. uint8 frames) else [N,C,H,W] (float faces).
    Returns (values, coverage): values [N,h,w,C] / [N,C,h,w] f32 in the source's layout, coverage
    [N,h,w,1] / [N,1,h,w] f32 = the sample of a ones image (kornia's mask). With `fill`, values get
    `(1 - coverage) * fill` added, as kornia's padding_mode="fill".
    Arithmetic follows grid_sample's CPU kernel bit for bit: weights nw = s*e, ne = s*w, sw = n*e, se = n*w and
    a fused multiply-add chain (torch.addcmul is one FMA per element).
    """
    if channels_last:
        n, height, width, channels = src.shape
    else:
        n, channels, height, width = src.shape
    x_w, y_n = ix.floor(), iy.floor()
    w = ix - x_w
    nn_ = iy - y_n
    xl, yt = x_w.long(), y_n.long()
    # per-axis weights with out-of-range taps zeroed: products are s*e exactly, or 0
    zero = torch.zeros((), device=ix.device)
    wx = (torch.where((xl >= 0) & (xl < width), 1.0 - w, zero), torch.where((xl >= -1) & (xl < width - 1), w, zero))
    wy = (torch.where((yt >= 0) & (yt < height), 1.0 - nn_, zero),
          torch.where((yt >= -1) & (yt < height - 1), nn_, zero))
    cols = (xl.clamp(0, width - 1), (xl + 1).clamp(0, width - 1))
    rows = (yt.clamp(0, height - 1) * width, (yt + 1).clamp(0, height - 1) * width)
    if channels_last:
        base = (torch.arange(n, device=src.device) * (height * width)).view(n, 1, 1)
        flat = src.reshape(n * height * width, channels)
    else:
        flat = src.reshape(n, channels, height * width)
    values = coverage = None
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # nw, ne, sw, se
        if channels_last:
            weight = (wy[dy] * wx[dx]).unsqueeze(-1)  # [N,h,w,1]
            index = (base + rows[dy] + cols[dx]).reshape(-1)
            tap = flat.index_select(0, index).view(*ix.shape, channels).float()  # [N,h,w,C]
        else:
            weight = (wy[dy] * wx[dx]).unsqueeze(1)  # [N,1,h,w]
            index = (rows[dy] + cols[dx]).reshape(n, 1, -1).expand(n, channels, -1)
            tap = torch.gather(flat, 2, index).view(n, channels, *ix.shape[1:]).float()  # [N,C,h,w]
        if values is None:
            values, coverage = tap * weight, weight
        else:
            values = torch.addcmul(values, tap, weight)
            coverage = coverage + weight
    if fill is not None:
        values = values + (1.0 - coverage) * fill
    return values, coverage


def warp_affine_hwc(
    src: torch.Tensor, matrix: torch.Tensor, dsize: tuple[int, int], *, fill: float | None = None,
) -> torch.Tensor:
    """kornia `warp_affine(src, M, dsize=(h, w), bilinear, align_corners=True)` for HWC images.

    src [N,H,W,C] (uint8 or float) -> [N,h,w,C] f32; `fill=None` is zero padding, a number is padding_mode="fill".
    """
    n, height, width, _ = src.shape
    zeros = torch.zeros(n, dtype=torch.long, device=src.device)
    ix, iy = source_coords(matrix.to(src.device), (height, width), dsize, zeros, zeros, dsize)
    return sample_bilinear(src, ix, iy, fill, channels_last=True)[0]
