"""Motion module: temporal self-attention along frames at every spatial position (AnimateDiff 'Vanilla')."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.models.unet_attention import Attention, FeedForward
from engine.models.unet_config import MOTION_NORM_EPS, MOTION_NORM_GROUPS, MotionConfig


class PositionalEncoding(nn.Module):
    """Sinusoidal frame-position table `pe` [1, max_len, C] (persistent buffer, as in the checkpoints)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # [max_len, 1]
        div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [N, f, C]
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention over frames; the position table is added to its (normed) input."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x [b*h*w, f, C]; context is ignored (temporal self-attention only)
        return super().forward(self.pos_encoder(x))


class TemporalTransformerBlock(nn.Module):
    """Pre-LN temporal attentions (each `x = attn(norm(x)) + x`) then a GEGLU feed-forward."""

    def __init__(self, dim: int, cfg: MotionConfig) -> None:
        super().__init__()
        n = cfg.num_attention_blocks
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, cfg.num_heads, cfg.max_frames) for _ in range(n)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [b*h*w, f, C]
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """Per-frame GroupNorm(32, eps 1e-6), linear in, temporal blocks, linear out, residual."""

    def __init__(self, channels: int, cfg: MotionConfig, zero_init_out: bool = True) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(MOTION_NORM_GROUPS, channels, eps=MOTION_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, cfg) for _ in range(cfg.num_blocks)]
        )
        self.proj_out = nn.Linear(channels, channels)
        if zero_init_out:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x [b*f, C, h, w] -> same. Tokens are laid out frame-minor, [b*h*w, f, C], for the whole block stack
        # (LayerNorm / feed-forward / projections are per token, so only attention cares about the grouping).
        bf, c, h, w = x.shape
        tokens = self.norm(x).reshape(-1, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, num_frames, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)  # [b*h*w, f, C]
        out = tokens.reshape(-1, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return out + x


class MotionModule(nn.Module):
    """Official `VanillaTemporalModule` (keys `temporal_transformer.*`); ignores temb and audio."""

    def __init__(self, channels: int, cfg: MotionConfig) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)
