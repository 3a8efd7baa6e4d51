"""LatentSync's audio-conditioned 3-D U-Net (spec section 2), with DeepCache's shallow step built in (section 6)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InvalidInputError, expect
from engine.models.unet_blocks import DownBlock, FrameJointGroupNorm, MidBlock, TimestepEmbedding, UpBlock
from engine.models.unet_blocks import timestep_embedding
from engine.models.unet_config import CROSS_ATTN_DOWN, CROSS_ATTN_UP, UNetConfig, parse_unet_config

AUDIO_INPUT_NDIM = (3, 4)  # [b*f, S, C] or [b, f, S, C]


def _fold_frames(x: torch.Tensor) -> torch.Tensor:
    """[b, C, f, h, w] -> [b*f, C, h, w] (b-major)."""
    return x.transpose(1, 2).flatten(0, 1)


def _unfold_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[b*f, C, h, w] -> [b, C, f, h, w]."""
    return x.unflatten(0, (-1, num_frames)).transpose(1, 2)


class LatentSyncUNet(nn.Module):
    """The official U-Net: state_dict keys equal `latentsync_unet.pt["state_dict"]`.

    forward(sample [B,13,F,H,W], timestep 0-d or [B], encoder_hidden_states [B*F,50,C]) -> noise [B,4,F,H,W].
    """

    def __init__(self, cfg: UNetConfig, raw_config: dict) -> None:
        super().__init__()
        self.cfg = cfg
        self.config = copy.deepcopy(raw_config)
        ch = cfg.block_out_channels
        temb_c = cfg.time_embed_dim
        common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, context_dim=cfg.cross_attention_dim)

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb_c)

        down = []
        for i, kind in enumerate(cfg.down_block_types):
            down.append(DownBlock(
                ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, add_downsample=i < len(ch) - 1, temb_c=temb_c,
                heads=cfg.heads[i] if kind == CROSS_ATTN_DOWN else None,
                motion=cfg.motion if cfg.down_motion[i] else None, **common,
            ))
        self.down_blocks = nn.ModuleList(down)

        rev_ch, rev_heads = ch[::-1], cfg.heads[::-1]
        up = []
        for i, kind in enumerate(cfg.up_block_types):
            up.append(UpBlock(
                rev_ch[min(i + 1, len(ch) - 1)], rev_ch[max(i - 1, 0)], rev_ch[i], cfg.layers_per_block + 1,
                add_upsample=i < len(ch) - 1, temb_c=temb_c,
                heads=rev_heads[i] if kind == CROSS_ATTN_UP else None,
                motion=cfg.motion if cfg.up_motion[i] else None, **common,
            ))
        self.up_blocks = nn.ModuleList(up)
        self.mid_block = MidBlock(ch[-1], temb_c, heads=cfg.heads[-1], out_scale=cfg.mid_block_scale_factor,
                                  **common)

        self.conv_norm_out = FrameJointGroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, kernel_size=3, padding=1)
        for conv in (self.conv_in, self.conv_out):  # official zero init (loaded from the checkpoint anyway)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg: dict) -> "LatentSyncUNet":
        """Build from the `model:` section of the official YAML (randomly initialised, fp32, current device)."""
        return cls(parse_unet_config(cfg), cfg)

    # ----------------------------------------------------------------------------------------------- helpers
    def _check_inputs(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                      encoder_hidden_states: torch.Tensor) -> None:
        expect(sample.ndim == 5 and sample.shape[1] == self.cfg.in_channels, InvalidInputError,
               "unet sample shape", f"[B, {self.cfg.in_channels}, F, H, W]", tuple(sample.shape))
        b, _, f = sample.shape[:3]
        max_f = self.cfg.motion.max_frames if self.cfg.motion is not None else None
        expect(f >= 1 and (max_f is None or f <= max_f), InvalidInputError, "unet frame count",
               f"1..{max_f}", f)
        ehs = encoder_hidden_states
        expect(ehs.ndim in AUDIO_INPUT_NDIM and ehs.shape[-1] == self.cfg.cross_attention_dim, InvalidInputError,
               "unet encoder_hidden_states shape", f"[B*F, S, {self.cfg.cross_attention_dim}]", tuple(ehs.shape))
        rows = ehs.shape[0] * ehs.shape[1] if ehs.ndim == 4 else ehs.shape[0]
        expect(rows == b * f, InvalidInputError, "unet encoder_hidden_states rows", f"B*F = {b * f}", rows)
        if isinstance(timestep, torch.Tensor):
            expect(timestep.ndim == 0 or (timestep.ndim == 1 and timestep.shape[0] in (1, b)), InvalidInputError,
                   "unet timestep shape", f"0-d or [{b}]", tuple(timestep.shape))

    def _time_act(self, timestep: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        """SiLU(time embedding) [B, T] in the module dtype; sinusoids in fp32."""
        t = timestep.to(device) if isinstance(timestep, torch.Tensor) else torch.tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch)
        proj = timestep_embedding(t, self.cfg.block_out_channels[0], self.cfg.flip_sin_to_cos, self.cfg.freq_shift)
        return F.silu(self.time_embedding(proj.to(self.time_embedding.linear_1.weight.dtype)))

    def _prepare(self, sample, timestep, encoder_hidden_states):  # noqa: ANN001, ANN202
        if not torch.jit.is_tracing():  # shape checks are trace-time constants; keep ONNX traces clean
            self._check_inputs(sample, timestep, encoder_hidden_states)
        b, _, f = sample.shape[:3]
        if self.cfg.center_input_sample:
            sample = 2 * sample - 1.0
        temb_act = self._time_act(timestep, b, sample.device)
        context = encoder_hidden_states.flatten(0, 1) if encoder_hidden_states.ndim == 4 else encoder_hidden_states
        x = self.conv_in(_fold_frames(sample))  # [b*f, C0, h, w]
        return x, temb_act, context, f

    def _head(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.conv_out(F.silu(self.conv_norm_out(x, num_frames)))
        return _unfold_frames(x, num_frames)  # [b, 4, f, h, w]

    def _last_layer(self, deep, x_in, temb_act, context, num_frames):  # noqa: ANN001, ANN202
        """The part a DeepCache shallow step recomputes: last up layer on cat(deep, conv_in output), then head."""
        last = self.up_blocks[-1]
        x = last.skip_layer(len(last.resnets) - 1, deep, x_in, temb_act, context, num_frames)
        return self._head(x, num_frames)

    # ----------------------------------------------------------------------------------------------- forwards
    def forward_full(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                     encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise [B,4,F,H,W], deep_feature [B,C0,F,H,W] = output of up_blocks[-1].motion_modules[-2])."""
        x_in, temb_act, context, f = self._prepare(sample, timestep, encoder_hidden_states)
        x, skips = x_in, [x_in]
        for block in self.down_blocks:
            x, res = block(x, temb_act, context, f)
            skips.extend(res)
        x = self.mid_block(x, temb_act, context, f)
        for up in self.up_blocks:
            n = len(up.resnets)
            is_last = up is self.up_blocks[-1]
            for i in range(n - 1 if is_last else n):
                x = up.skip_layer(i, x, skips.pop(), temb_act, context, f)
            if not is_last:
                x = up.upsample(x, skips[-1].shape[-2:])
        deep = x
        noise = self._last_layer(deep, skips.pop(), temb_act, context, f)
        return noise, _unfold_frames(deep, f)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """noise [B, 4, F, H, W]."""
        return self.forward_full(sample, timestep, encoder_hidden_states)[0]

    def forward_shallow(self, sample: torch.Tensor, timestep: torch.Tensor | int | float,
                        encoder_hidden_states: torch.Tensor, deep_feature: torch.Tensor) -> torch.Tensor:
        """DeepCache shallow step: noise from a cached deep feature [B,C0,F,H,W] and fresh temb/conv_in."""
        if not torch.jit.is_tracing():
            expected = (sample.shape[0], self.up_blocks[-1].resnets[-1].conv2.out_channels, *sample.shape[2:])
            expect(tuple(deep_feature.shape) == expected, InvalidInputError, "unet deep_feature shape",
                   list(expected), tuple(deep_feature.shape))
        x_in, temb_act, context, f = self._prepare(sample, timestep, encoder_hidden_states)
        return self._last_layer(_fold_frames(deep_feature), x_in, temb_act, context, f)
