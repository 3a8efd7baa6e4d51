"""Spatial transformer with audio cross-attention (per-frame GroupNorm, SDPA attention, GEGLU feed-forward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.unet_config import TRANSFORMER_NORM_EPS

FF_MULT = 4
MAX_SDPA_BATCH = 65_535  # CUDA grid y/z limit hit by some SDPA kernels for batch > 65535


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA, split along the batch when it exceeds the CUDA grid limit (temporal attention batch = b*h*w)."""
    n = q.shape[0]
    if torch.jit.is_tracing() or n <= MAX_SDPA_BATCH:  # exported graphs leave the split to the runtime
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + MAX_SDPA_BATCH], k[i:i + MAX_SDPA_BATCH],
                                                     v[i:i + MAX_SDPA_BATCH]) for i in range(0, n, MAX_SDPA_BATCH)])


class Attention(nn.Module):
    """Multi-head attention; q/k/v without bias, `to_out.0` with bias, default 1/sqrt(d) scale."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # key `to_out.0` (to_out.1 was a parameter-free dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape  # [N, L, C] -> [N, heads, L, C/heads]
        return x.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x [N, L, C]; context [N, S, Cc] (None: self-attention)
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = _sdpa(q, k, v)  # [N, heads, L, d]
        out = out.transpose(1, 2).flatten(2)  # [N, L, C]
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """Linear to 2*inner, then value * GELU(gate)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers-style FeedForward(dim, mult=4, "geglu"): keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = dim * FF_MULT
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: spatial self-attention, audio cross-attention, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # x [b*f, h*w, C]; context [b*f, 50, Cc]
        x = self.attn1(self.norm1(x)) + x
        if context is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over h*w tokens (official `Transformer3DModel`, 1x1-conv projections)."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # x [b*f, C, h, w] -> same; GroupNorm here is per frame
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [b*f, h*w, C]
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = tokens.transpose(1, 2).reshape(bf, c, h, w)
        return self.proj_out(out) + x
