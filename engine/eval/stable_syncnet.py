"""StableSyncNet (LatentSync's 16-frame sync critic) as an automatic lip-sync metric."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInputError, expect
from engine.models.unet_attention import FeedForward  # same GEGLU FF and keys (net.0.proj, net.2)

GN_GROUPS = 32
GN_EPS = 1e-6
LN_EPS = 1e-5
ATTN_HEADS = 8
FACE_SIZE = 256  # aligned face side (px)
WINDOW_FRAMES = 16
SYNC_THRESHOLD = 0.5  # a window counts as in sync above this cosine


def official_stable_syncnet_config() -> dict:
    """The `model:` section of configs/syncnet/syncnet_16_pixel_attn.yaml."""
    return {
        "audio_encoder": {
            "in_channels": 1,
            "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
            "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
            "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
            "dropout": 0.0,
        },
        "visual_encoder": {
            "in_channels": 48,
            "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
            "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
            "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
            "dropout": 0.0,
        },
    }


def _pair(factor: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (factor, factor) if isinstance(factor, int) else (int(factor[0]), int(factor[1]))


class ResnetBlock2D(nn.Module):
    """GN-SiLU-conv3x3 twice + (1x1) shortcut, then optional zero pad + strided 3x3 downsample."""

    def __init__(self, in_channels: int, out_channels: int, downsample: tuple[int, int], dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, in_channels, eps=GN_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = nn.GroupNorm(GN_GROUPS, out_channels, eps=GN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.downsample_conv = None
        if downsample != (1, 1):
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, downsample, 0)
        # F.pad order (left, right, top, bottom): one extra row/column where the axis is not strided
        self.pad = (0, 1, 1, 1) if downsample[0] == 1 else (1, 1, 0, 1) if downsample[1] == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class Attention(nn.Module):
    """Multi-head self-attention with q/k/v bias (keys to_q/to_k/to_v/to_out.0)."""

    def __init__(self, dim: int, heads: int = ATTN_HEADS):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,N,C]
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2) for proj in
                   (self.to_q, self.to_k, self.to_v))  # fmt: skip
        out = F.scaled_dot_product_attention(q, k, v)  # [B,heads,N,C/heads]
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(b, n, c)))


class AttentionBlock2D(nn.Module):
    """GN -> 1x1 conv -> tokens -> (LN, attention, +) -> (LN, GEGLU FF, +) -> 1x1 conv, + outer residual."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.LayerNorm(channels, eps=LN_EPS)
        self.attn = Attention(channels)
        self.norm3 = nn.LayerNorm(channels, eps=LN_EPS)
        self.ff = FeedForward(channels)  # inference only: dropout is the identity
        self.conv_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,C,H,W]
        b, c, h, w = x.shape
        t = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # [B,HW,C]
        t = self.attn(self.norm2(t)) + t
        t = self.ff(self.norm3(t)) + t
        return self.conv_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class DownEncoder2D(nn.Module):
    """conv_in, resnet blocks (each followed by attention where attn_blocks says), GN + ReLU."""

    def __init__(self, in_channels: int, block_out_channels: list[int], downsample_factors: list,
                 attn_blocks: list[int], dropout: float = 0.0):  # fmt: skip
        super().__init__()
        expect(len(block_out_channels) == len(downsample_factors) == len(attn_blocks), InvalidInputError,
               "DownEncoder2D config", "equal-length channel/downsample/attn lists",
               (len(block_out_channels), len(downsample_factors), len(attn_blocks)))  # fmt: skip
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, 1, 1)
        blocks: list[nn.Module] = []
        channels = block_out_channels[0]
        for out, factor, attn in zip(block_out_channels, downsample_factors, attn_blocks):
            blocks.append(ResnetBlock2D(channels, out, _pair(factor), dropout))
            channels = out
            if attn:
                blocks.append(AttentionBlock2D(channels, dropout))
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(GN_GROUPS, channels, eps=GN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return F.relu(self.norm_out(x))


class StableSyncNet(nn.Module):
    """Visual [B,48,128,256] and audio [B,1,80,52] towers -> L2-normalised embeddings [B,D]."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.audio_encoder = DownEncoder2D(**config["audio_encoder"])
        self.visual_encoder = DownEncoder2D(**config["visual_encoder"])
        self.eval()

    @classmethod
    def from_config(cls, config: dict) -> StableSyncNet:
        return cls(config)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = F.normalize(self.visual_encoder(visual).reshape(visual.shape[0], -1), p=2, dim=1)
        sound = F.normalize(self.audio_encoder(audio).reshape(audio.shape[0], -1), p=2, dim=1)
        return vision, sound


def visual_input(faces: np.ndarray | torch.Tensor) -> torch.Tensor:
    """faces [B,16,256,256,3] RGB uint8 -> [B,48,128,256] in [-1,1]: lower half, channel = 3*frame + rgb."""
    faces = torch.as_tensor(faces)
    expect(faces.ndim == 5 and tuple(faces.shape[1:]) == (WINDOW_FRAMES, FACE_SIZE, FACE_SIZE, 3)
           and faces.dtype == torch.uint8, InvalidInputError, "StableSyncNet faces",
           f"uint8 [B,{WINDOW_FRAMES},{FACE_SIZE},{FACE_SIZE},3]", f"{faces.dtype} {tuple(faces.shape)}")  # fmt: skip
    x = (faces.permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5) / 0.5  # [B,F,3,H,W]
    x = x.reshape(faces.shape[0], WINDOW_FRAMES * 3, FACE_SIZE, FACE_SIZE)
    return x[:, :, FACE_SIZE // 2 :, :]


@dataclass(frozen=True)
class StableSyncResult:
    """Mean cosine "sync probability" over 16-frame windows and the fraction above 0.5."""

    mean_prob: float
    frac_in_sync: float
    n_windows: int
    window_starts: tuple[int, ...]
    window_probs: tuple[float, ...]


def window_starts(num_frames: int, mel_columns: int, stride: int = WINDOW_FRAMES) -> list[int]:
    """Window starts 0, stride, ... whose 16 frames and 52 mel columns both exist."""
    from engine.eval.syncnet_mel import WINDOW_COLUMNS, window_start_column

    return [s for s in range(0, max(0, num_frames - WINDOW_FRAMES + 1), stride)
            if window_start_column(s) + WINDOW_COLUMNS <= mel_columns]  # fmt: skip


@torch.inference_mode()
def stable_sync_score(
    net: StableSyncNet, faces: np.ndarray, mel: np.ndarray, *, stride: int = WINDOW_FRAMES, batch_size: int = 4,
    on_batch=None,
) -> StableSyncResult:
    """faces [T,256,256,3] RGB uint8 aligned faces, mel [80,M] -> StableSyncResult over the clip's windows
    (`on_batch(done, total)` is told the windows scored so far)."""
    from engine.eval.syncnet_mel import mel_window

    expect(stride >= 1, InvalidInputError, "window stride", ">= 1", stride)
    starts = window_starts(len(faces), mel.shape[1], stride)
    if not starts:
        raise InvalidInputError(
            f"StableSyncNet: expected at least {WINDOW_FRAMES} frames with matching audio (one window), "
            f"found {len(faces)} frames and {mel.shape[1]} mel columns"
        )
    device = next(net.parameters()).device
    probs: list[float] = []
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        visual = visual_input(np.stack([faces[s : s + WINDOW_FRAMES] for s in batch])).to(device)
        audio = torch.from_numpy(np.stack([mel_window(mel, s) for s in batch])).float().to(device)
        vision, sound = net(visual, audio)
        probs.extend(F.cosine_similarity(vision, sound, dim=1).cpu().tolist())
        if on_batch is not None:
            on_batch(len(probs), len(starts))
    values = np.asarray(probs)
    return StableSyncResult(
        mean_prob=float(values.mean()),
        frac_in_sync=float((values > SYNC_THRESHOLD).mean()),
        n_windows=len(starts),
        window_starts=tuple(starts),
        window_probs=tuple(probs),
    )


def small_stable_syncnet_config() -> dict:
    """The golden small config: every channel c -> max(32, c // 32); for tests and random-weight runs."""
    config = official_stable_syncnet_config()
    for tower in config.values():
        tower["block_out_channels"] = [max(GN_GROUPS, c // 32) for c in tower["block_out_channels"]]
    return config


def load_stable_syncnet(
    weights: str | Path | None = None,
    *,
    config: dict | None = None,
    random_seed: int | None = None,
    offline: bool = False,
    device: str = "cpu",
) -> StableSyncNet:
    """StableSyncNet from a file (a safetensors `config` metadata entry wins), the hash-checked
    `stable_syncnet.pt` download (weights None), or random weights (small config unless given)."""
    from engine.eval.weights import STABLE_SYNCNET, fetch_checkpoint, load_state_dict_file, load_strict

    if random_seed is not None:
        torch.manual_seed(random_seed)
        return StableSyncNet(config or small_stable_syncnet_config()).to(device).eval()
    path = Path(weights) if weights is not None else fetch_checkpoint(STABLE_SYNCNET, offline=offline)
    if config is None and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            stored = (handle.metadata() or {}).get("config")
        config = json.loads(stored) if stored else None
    net = StableSyncNet(config or official_stable_syncnet_config())
    return load_strict(net, load_state_dict_file(path), source=str(path)).to(device).eval()
