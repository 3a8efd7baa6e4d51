"""Paste generated faces back into frames (official `restore_img`), batched and limited to each face's region.

Per frame: inverse-warp the face (fill 127) and a ones mask, 2x2 kornia erosion E, soft mask
S = gaussian_blur(cv2_erode(E, 2*w_edge)) with w_edge = int(sqrt(sum E)) // 20, then S*E*face + (1-S)*frame.
Everything outside the face footprint plus a margin of (erosion + blur) reach is exactly the input frame,
so the work runs on a window per frame; the window's values equal the whole-frame computation's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InvalidInputError, expect
from engine.face.warp import as_matrices, grid_sample_fill, invert_affine, normalized_grid

RESTORE_FILL = 127.0  # kornia fill of the inverse face warp
EDGE_DIVISOR = 20  # w_edge = int(sqrt(mask area)) // EDGE_DIVISOR
KORNIA_EROSION_BORDER = 1e4  # kornia morphology 'geodesic' border (max_val)
CV2_DEFAULT_KERNEL = 3  # cv2.erode with an empty kernel uses a 3x3 rectangle
FOOTPRINT_SLACK = 2  # px around the analytic footprint bbox (covers fp32 rounding of the warp)
WINDOW_SLACK = 3  # px beyond the erosion/blur reach (w_edge, or 1 for the 3x3 default) around the footprint
# Frames per pass on the CPU: a 16-frame batch's float windows (about 90 MB each at 1080x1920) cost more in
# memory traffic and page faults than the per-op overhead saved (one torch thread, demo1: 16 per pass about 3x the
# CPU per frame of 1, 4 about 1.7x; with two intra-op threads on a loaded box, where every op's thread barrier
# costs, 4 did as well as 16). benchmarks/face_stage.py measures it.
CPU_FRAMES_PER_PASS = 4


def resize_faces(faces: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """torchvision `resize(faces, size_hw, BICUBIC, antialias=True)` on float [N,3,R,R] -> [N,3,h,w], no clamp."""
    if tuple(faces.shape[-2:]) == tuple(size_hw):
        return faces.float()
    return F.interpolate(faces.float(), size=size_hw, mode="bicubic", align_corners=False, antialias=True)


def kornia_erosion_2x2(mask: torch.Tensor) -> torch.Tensor:
    """kornia.morphology.erosion with ones(2,2) (origin (1,1), geodesic border). [N,1,H,W] -> [N,1,H,W]"""
    padded = F.pad(mask, (1, 0, 1, 0), value=KORNIA_EROSION_BORDER)
    return torch.minimum(torch.minimum(padded[..., :-1, :-1], padded[..., :-1, 1:]),
                         torch.minimum(padded[..., 1:, :-1], padded[..., 1:, 1:]))


def _window_min(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """min over x[i : i+size] along dim (length L -> L-size+1), by doubling: O(log size) passes, exact."""
    span, out = 1, x
    while 2 * span <= size:
        length = out.shape[dim] - span
        out = torch.minimum(out.narrow(dim, 0, length), out.narrow(dim, span, length))
        span *= 2
    length = x.shape[dim] - size + 1
    return torch.minimum(out.narrow(dim, 0, length), out.narrow(dim, size - span, length))


def cv2_erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.erode(mask, ones((size, size))) with the default anchor and border; size 0 means 3x3. [N,1,H,W]"""
    size = size if size > 0 else CV2_DEFAULT_KERNEL
    if size == 1:
        return mask
    before, after = size // 2, size - 1 - size // 2  # window [x - size//2, x + size - 1 - size//2]
    padded = F.pad(mask, (before, after, before, after), value=float("inf"))  # cv2's erode border ignores
    return _window_min(_window_min(padded, size, 2), size, 3)


def gaussian_kernel1d(size: int, sigma: float, device) -> torch.Tensor:
    """kornia `get_gaussian_kernel1d` in float32. [size]"""
    sig = torch.tensor([[sigma]], device=device, dtype=torch.float32)
    x = torch.arange(size, device=device, dtype=torch.float32) - float(size // 2)
    if size % 2 == 0:
        x = x + 0.5
    gauss = torch.exp(-x.pow(2.0) / (2 * sig.pow(2.0)))
    return (gauss / gauss.sum(-1, keepdim=True))[0]


def _correlate(x: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """'valid' 1-D correlation along dim as an FMA chain over taps in order (== CPU conv2d's values)."""
    length = x.shape[dim] - len(taps) + 1
    acc = x.narrow(dim, 0, length) * taps[0]
    for offset in range(1, len(taps)):
        acc.add_(x.narrow(dim, offset, length), alpha=taps[offset])
    return acc


def gaussian_blur(mask: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """kornia `gaussian_blur2d(mask, (size,size), (sigma,sigma))`: separable, reflect border, x then y. [N,1,H,W]"""
    if size == 1:
        return mask  # a one-tap normalised kernel is the identity
    taps = gaussian_kernel1d(size, sigma, "cpu").tolist()
    half = size // 2
    out = _correlate(F.pad(mask, (half, half, 0, 0), mode="reflect"), taps, 3)
    return _correlate(F.pad(out, (0, 0, half, half), mode="reflect"), taps, 2)


def soft_mask(eroded: torch.Tensor, w_edge: int) -> torch.Tensor:
    """The blend weight S from the 2x2-eroded mask E for one w_edge. [N,1,H,W]"""
    size = 2 * w_edge + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's auto sigma rule
    return gaussian_blur(cv2_erode(eroded, 2 * w_edge), size, sigma)


def face_windows(
    inverse: np.ndarray, crop_hw: tuple[int, int], frame_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per-frame window origins (y0 [N], x0 [N]) and a common size that hold every pixel restore can change.

    inverse [N,2,3] crop->frame. The footprint is the image of the crop rectangle (plus one bilinear pixel);
    the margin covers the cv2 erosion and blur reach (w_edge each way) for the largest w_edge the footprint allows.
    """
    (h, w), (height, width) = crop_hw, frame_hw
    corners = np.array([[-1, -1, 1], [w, -1, 1], [-1, h, 1], [w, h, 1]], dtype=np.float64).T  # [3,4]
    pts = inverse.astype(np.float64) @ corners  # [N,2,4] (x, y)
    lo = np.floor(pts.min(axis=2)) - FOOTPRINT_SLACK
    hi = np.ceil(pts.max(axis=2)) + FOOTPRINT_SLACK + 1
    lo = np.clip(lo, 0, [width, height]).astype(np.int64)
    hi = np.clip(hi, 0, [width, height]).astype(np.int64)
    area_bound = np.prod(np.maximum(hi - lo, 0), axis=1)
    # Outside the footprint E = 0; C = erode(E) and S = blur(C) reach at most w_edge px further, and a window
    # edge more than w_edge px from the footprint sees only zeros whether padded (inf / reflect) or not.
    margin = np.sqrt(area_bound).astype(np.int64) // EDGE_DIVISOR + WINDOW_SLACK  # area_bound >= sum(E)
    lo = np.clip(lo - margin[:, None], 0, [width, height])
    hi = np.clip(hi + margin[:, None], 0, [width, height])
    box_w = int(max(1, (hi[:, 0] - lo[:, 0]).max()))
    box_h = int(max(1, (hi[:, 1] - lo[:, 1]).max()))
    x0 = np.minimum(lo[:, 0], width - box_w)
    y0 = np.minimum(lo[:, 1], height - box_h)
    return y0, x0, (box_h, box_w)


def restore_batch(
    frames: torch.Tensor, faces: torch.Tensor, matrices: np.ndarray | torch.Tensor, crop_hw: tuple[int, int], *,
    region_only: bool = True, inplace: bool = False,
) -> torch.Tensor:
    """Official restore for N frames at once.

    frames [N,H,W,3] uint8; faces [N,3,h,w] or [N,3,R,R] float (about [-1,1], resized to crop_hw if needed);
    matrices [N,2,3] source->crop. Returns new frames [N,H,W,3] uint8 on the frames' device.
    `region_only=False` computes every pixel of the frame (reference path for tests and benchmarks);
    `inplace=True` writes into `frames` instead of a copy.
    """
    expect(frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.uint8, InvalidInputError,
           "frames", "uint8 [N,H,W,3]", f"{frames.dtype} {tuple(frames.shape)}")
    expect(faces.ndim == 4 and faces.shape[1] == 3 and faces.is_floating_point(), InvalidInputError, "faces",
           "float [N,3,h,w]", f"{faces.dtype} {tuple(faces.shape)}")
    n, height, width, _ = frames.shape
    mats = as_matrices(matrices)
    expect(len(faces) == n and len(mats) == n, InvalidInputError, "faces/matrices count", n,
           (len(faces), len(mats)))
    expect(bool(torch.isfinite(mats).all()), InvalidInputError, "matrices", "finite values", "NaN/Inf")
    out = frames if inplace else frames.clone()
    step = CPU_FRAMES_PER_PASS if frames.device.type == "cpu" and region_only else max(n, 1)
    for i in range(0, n, step):  # views of `out`: each pass pastes into its own frames
        _restore(out[i:i + step], faces[i:i + step], mats[i:i + step], crop_hw, region_only=region_only)
    return out


def _restore(frames: torch.Tensor, faces: torch.Tensor, mats: torch.Tensor, crop_hw: tuple[int, int], *,
             region_only: bool) -> None:
    """`restore_batch` into `frames` [N,H,W,3] uint8 (written in place), checked inputs."""
    n, height, width, _ = frames.shape
    device = frames.device
    faces = resize_faces(faces.to(device), crop_hw).contiguous()  # [N,3,h,w]
    inverse = invert_affine(mats).to(device)  # [N,2,3] crop->frame, kornia's fp32 inverse
    if region_only:
        y0, x0, box = face_windows(inverse.cpu().numpy(), crop_hw, (height, width))
    else:
        y0, x0, box = np.zeros(n, np.int64), np.zeros(n, np.int64), (height, width)
    ys, xs = torch.as_tensor(y0, device=device), torch.as_tensor(x0, device=device)
    gx, gy = normalized_grid(inverse, crop_hw, (height, width), ys, xs, box)  # [N,bh,bw]
    warped, coverage = grid_sample_fill(faces, gx, gy, RESTORE_FILL)  # [N,3,bh,bw], [N,1,bh,bw]
    inv_face = (warped / 2 + 0.5).clamp(0, 1) * 255
    eroded = kornia_erosion_2x2(coverage)  # [N,1,bh,bw]
    pasted = eroded * inv_face  # [N,3,bh,bw]
    # area = sum(E), accumulated in float64 (the official sums in its warp dtype; fp16 would overflow at 1080p)
    w_edges = [int(math.sqrt(a)) // EDGE_DIVISOR for a in eroded.double().sum(dim=(1, 2, 3)).tolist()]
    soft = torch.empty_like(eroded)
    for w_edge in sorted(set(w_edges)):  # frames sharing a kernel size run together
        idx = [i for i, w in enumerate(w_edges) if w == w_edge]
        soft[idx] = soft_mask(eroded[idx], w_edge)
    (bh, bw), windows = box, list(zip(y0.tolist(), x0.tolist()))
    region = torch.stack([frames[i, y:y + bh, x:x + bw] for i, (y, x) in enumerate(windows)])  # [N,bh,bw,3]
    region = region.permute(0, 3, 1, 2).float()  # [N,3,bh,bw]
    blended = (soft * pasted + (1 - soft) * region).to(torch.uint8)  # truncation, as the official cast
    for i, (y, x) in enumerate(windows):
        frames[i, y:y + bh, x:x + bw] = blended[i].permute(1, 2, 0)
