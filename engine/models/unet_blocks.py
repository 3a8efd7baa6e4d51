"""U-Net building blocks: frame-joint GroupNorm resnets, resampling, time embedding, down/mid/up levels.

Activations travel as [b*f, C, h, w] (frames folded into the batch, b-major) so convolutions and per-frame
norms run natively; only the resnet/out GroupNorms need the frame axis back (their statistics span all frames).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.unet_attention import SpatialTransformer
from engine.models.unet_config import TIME_PROJ_MAX_PERIOD, MotionConfig
from engine.models.unet_motion import MotionModule


class FrameJointGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics span all frames of a clip (official nn.GroupNorm on the 5-D tensor)."""

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        # x [b*f, C, h, w]; statistics per (b, group) over (C/G, f, h, w)
        bf, c, h, w = x.shape
        g = self.num_groups
        xg = x.reshape(-1, num_frames, g, c // g, h * w)  # [b, f, G, C/G, h*w]
        stats_in = xg.float() if x.dtype == torch.float16 else xg  # fp16 variance can overflow
        var, mean = torch.var_mean(stats_in, dim=(1, 3, 4), correction=0, keepdim=True)  # [b, 1, G, 1, 1]
        scale = torch.rsqrt(var + self.eps).to(x.dtype) * self.weight.view(1, 1, g, c // g, 1)
        out = torch.addcmul(self.bias.view(1, 1, g, c // g, 1), xg - mean.to(x.dtype), scale)
        return out.reshape(bf, c, h, w)


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Sinusoidal embedding of float32 timesteps [B] -> [B, dim] (diffusers `Timesteps`, computed in fp32)."""
    half = dim // 2
    exponent = -math.log(TIME_PROJ_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - shift))  # [half]
    args = timesteps.float()[:, None] * freqs[None, :]  # [B, half]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    return torch.cat(parts, dim=-1)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """Pre-norm resnet with frame-joint GroupNorms and a per-clip time-embedding bias."""

    def __init__(self, in_c: int, out_c: int, temb_c: int, groups: int, eps: float, out_scale: float = 1.0) -> None:
        super().__init__()
        self.out_scale = out_scale
        self.norm1 = FrameJointGroupNorm(groups, in_c, eps=eps)
        self.conv1 = nn.Conv2d(in_c, out_c, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_c, out_c)
        self.norm2 = FrameJointGroupNorm(groups, out_c, eps=eps)
        self.conv2 = nn.Conv2d(out_c, out_c, kernel_size=3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_c, out_c, kernel_size=1) if in_c != out_c else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x [b*f, Cin, h, w]; temb_act = SiLU(temb) [b, T] -> [b*f, Cout, h, w]
        h = self.conv1(F.silu(self.norm1(x, num_frames)))
        t = self.time_emb_proj(temb_act)[:, None, :, None, None]  # [b, 1, Cout, 1, 1]
        h = (h.unflatten(0, (-1, num_frames)) + t).flatten(0, 1)
        h = self.conv2(F.silu(self.norm2(h, num_frames)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        return out if self.out_scale == 1.0 else out / self.out_scale


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1 (key `conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x (or to the skip's size, for latents that are not multiples of 8), then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Level(nn.Module):
    """One resolution level: `layers` x (resnet [+ spatial transformer] [+ motion module]).

    Submodules are registered as attentions, resnets, motion_modules (the official state_dict order).
    """

    def __init__(
        self,
        in_channels: list[int],
        out_c: int,
        temb_c: int,
        *,
        groups: int,
        eps: float,
        heads: int | None,
        context_dim: int,
        motion: MotionConfig | None,
        out_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if heads is not None:
            self.attentions = nn.ModuleList(
                [SpatialTransformer(out_c, heads, context_dim, groups) for _ in in_channels]
            )
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(
            [ResnetBlock(c, out_c, temb_c, groups, eps, out_scale) for c in in_channels]
        )
        self.motion_modules = nn.ModuleList([MotionModule(out_c, motion) for _ in in_channels]) if motion else None

    def layer(self, i: int, x: torch.Tensor, temb_act: torch.Tensor, context: torch.Tensor | None,
              num_frames: int) -> torch.Tensor:
        """Layer i: resnet -> spatial transformer -> motion module; [b*f, C, h, w] in and out."""
        x = self.resnets[i](x, temb_act, num_frames)
        if self.attentions is not None:
            x = self.attentions[i](x, context)
        if self.motion_modules is not None:
            x = self.motion_modules[i](x, num_frames)
        return x


class DownBlock(Level):
    """Encoder level; returns its per-layer outputs (and the downsampled one) as skips."""

    def __init__(self, in_c: int, out_c: int, num_layers: int, add_downsample: bool, **kw) -> None:  # noqa: ANN003
        super().__init__([in_c] + [out_c] * (num_layers - 1), out_c, **kw)
        self.downsamplers = nn.ModuleList([Downsample(out_c)]) if add_downsample else None

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, context: torch.Tensor | None,
                num_frames: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb_act, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet, spatial transformer, resnet (no motion module)."""

    def __init__(self, channels: int, temb_c: int, *, groups: int, eps: float, heads: int, context_dim: int,
                 out_scale: float) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([SpatialTransformer(channels, heads, context_dim, groups)])
        self.resnets = nn.ModuleList(
            [ResnetBlock(channels, channels, temb_c, groups, eps, out_scale) for _ in range(2)]
        )

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, context: torch.Tensor | None,
                num_frames: int) -> torch.Tensor:
        x = self.resnets[0](x, temb_act, num_frames)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb_act, num_frames)


class UpBlock(Level):
    """Decoder level; each layer consumes one skip (concatenated on channels), then optional upsampling."""

    def __init__(self, in_c: int, prev_c: int, out_c: int, num_layers: int, add_upsample: bool,
                 **kw) -> None:  # noqa: ANN003
        skip_c = [out_c] * (num_layers - 1) + [in_c]
        resnet_in = [prev_c] + [out_c] * (num_layers - 1)
        super().__init__([r + s for r, s in zip(resnet_in, skip_c)], out_c, **kw)
        self.upsamplers = nn.ModuleList([Upsample(out_c)]) if add_upsample else None

    def skip_layer(self, i: int, x: torch.Tensor, skip: torch.Tensor, temb_act: torch.Tensor,
                   context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """Layer i on cat([x, skip], channels)."""
        return self.layer(i, torch.cat([x, skip], dim=1), temb_act, context, num_frames)

    def upsample(self, x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        return x if self.upsamplers is None else self.upsamplers[0](x, size)
