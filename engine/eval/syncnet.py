"""Classic SyncNet `S` (LSE-C / LSE-D evaluator): lip and audio towers with the official key layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import InvalidInputError, expect

LIP_FRAMES = 5  # frames per lip window
CROP_SIZE = 224  # lip crop side (px)
MFCC_COEFFS = 13
MFCC_WINDOW = 20  # MFCC columns per window (100 Hz x 0.2 s)
MFCC_PER_FRAME = 4  # MFCC columns per video frame (100 Hz / 25 fps)
FC_SIZE = 1024  # num_layers_in_fc_layers of the official evaluation
TOWER_SIZE = 512  # conv tower output width


def _fc(out_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(TOWER_SIZE, TOWER_SIZE), nn.BatchNorm1d(TOWER_SIZE), nn.ReLU(), nn.Linear(TOWER_SIZE, out_size)
    )


class SyncNetS(nn.Module):
    """`S(num_layers_in_fc_layers)`: module names are the checkpoint keys (netcnnaud/netfcaud/netcnnlip/netfclip)."""

    def __init__(self, fc_size: int = FC_SIZE):
        super().__init__()
        self.netcnnaud = nn.Sequential(  # (B,1,13,20) -> (B,512,1,1)
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, 1, 1), nn.BatchNorm2d(384), nn.ReLU(),
            nn.Conv2d(384, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), 1, 0), nn.BatchNorm2d(512), nn.ReLU(),
        )  # fmt: skip
        self.netfcaud = _fc(fc_size)
        self.netcnnlip = nn.Sequential(  # (B,3,5,224,224) -> (B,512,1,1,1)
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), 1, 0), nn.BatchNorm3d(512), nn.ReLU(),
        )  # fmt: skip
        self.netfclip = _fc(fc_size)
        self.eval()

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,1,13,20] MFCC -> [B,fc_size] (no normalisation)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,5,224,224] BGR 0..255 floats -> [B,fc_size] (no normalisation)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))


def lip_windows(crops_bgr: np.ndarray, starts: list[int] | range) -> torch.Tensor:
    """crops_bgr [T,224,224,3] uint8 -> [len(starts),3,5,224,224] float32 (window s = frames s..s+4)."""
    expect(
        crops_bgr.ndim == 4 and crops_bgr.shape[1:] == (CROP_SIZE, CROP_SIZE, 3) and crops_bgr.dtype == np.uint8,
        InvalidInputError, "lip crops", f"uint8 [T,{CROP_SIZE},{CROP_SIZE},3]", f"{crops_bgr.dtype} {crops_bgr.shape}",
    )  # fmt: skip
    video = torch.from_numpy(np.ascontiguousarray(crops_bgr)).permute(3, 0, 1, 2)  # [3,T,H,W] uint8
    return torch.stack([video[:, s : s + LIP_FRAMES] for s in starts]).float()


def mfcc_windows(cc: torch.Tensor, frames: list[int] | range) -> torch.Tensor:
    """cc [1,1,13,M] -> [len(frames),1,13,20]: video frame v uses MFCC columns [4v, 4v+20)."""
    return torch.cat([cc[..., MFCC_PER_FRAME * v : MFCC_PER_FRAME * v + MFCC_WINDOW] for v in frames])


@torch.inference_mode()
def embed_clip(
    net: SyncNetS, crops_bgr: np.ndarray, cc: torch.Tensor, num_windows: int, *, batch_size: int = 20,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lip and audio embeddings [n,fc_size] for windows 0..n-1, computed in batches (official batch 20).

    `on_batch(done, total)` is told the windows done after each batch (progress bars)."""
    device = next(net.parameters()).device
    lips, auds = [], []
    for start in range(0, num_windows, batch_size):
        frames = range(start, min(num_windows, start + batch_size))
        lips.append(net.forward_lip(lip_windows(crops_bgr, frames).to(device)).cpu())
        auds.append(net.forward_aud(mfcc_windows(cc, frames).to(device)).cpu())
        if on_batch is not None:
            on_batch(frames.stop, num_windows)
    return torch.cat(lips), torch.cat(auds)


def load_syncnet(
    weights: str | Path | None = None, *, random_seed: int | None = None, offline: bool = False, device: str = "cpu"
) -> SyncNetS:
    """SyncNet S from a file, from the hash-checked `syncnet_v2.model` download (weights None), or random."""
    from engine.eval.weights import SYNCNET_V2, fetch_checkpoint, load_state_dict_file, load_strict

    if random_seed is not None:
        torch.manual_seed(random_seed)
        return SyncNetS().to(device).eval()
    path = Path(weights) if weights is not None else fetch_checkpoint(SYNCNET_V2, offline=offline)
    return load_strict(SyncNetS(), load_state_dict_file(path), source=str(path)).to(device).eval()
