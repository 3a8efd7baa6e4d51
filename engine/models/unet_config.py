"""The U-Net `model:` config: official and tiny values, parsed into a validated frozen dataclass."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidInputError, expect

CROSS_ATTN_DOWN = "CrossAttnDownBlock3D"
PLAIN_DOWN = "DownBlock3D"
CROSS_ATTN_UP = "CrossAttnUpBlock3D"
PLAIN_UP = "UpBlock3D"
MID_BLOCK = "UNetMidBlock3DCrossAttn"
TEMPORAL_SELF = "Temporal_Self"
MOTION_NORM_GROUPS = 32  # motion-module GroupNorm: always 32 groups, whatever norm_num_groups says
MOTION_NORM_EPS = 1e-6
TRANSFORMER_NORM_EPS = 1e-6  # spatial transformer GroupNorm eps (its groups = norm_num_groups)
TIME_PROJ_MAX_PERIOD = 10_000

_MOTION_KWARGS = {
    "num_attention_heads": 8,
    "num_transformer_block": 1,
    "attention_block_types": [TEMPORAL_SELF, TEMPORAL_SELF],
    "temporal_position_encoding": True,
    "temporal_position_encoding_max_len": 24,
    "temporal_attention_dim_div": 1,
    "zero_initialize": True,
}

_OFFICIAL = {
    "act_fn": "silu",
    "add_audio_layer": True,
    "attention_head_dim": 8,  # NUMBER of heads (head width = channels / 8)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": [CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN],
    "mid_block_type": MID_BLOCK,
    "up_block_types": [PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 13,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,  # informational only; the network accepts any latent size
    "resnet_time_scale_shift": "default",
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": _MOTION_KWARGS,
}

_TINY_OVERRIDES = {
    "attention_head_dim": 4,
    "block_out_channels": [32, 32, 32, 64],
    "norm_num_groups": 16,
    "sample_size": 16,
    "motion_module_kwargs": {**_MOTION_KWARGS, "num_attention_heads": 2},
}

# Keys a `model:` section may carry that do not change the network (or only at their default value).
_IGNORED_AT_DEFAULT = {
    "sample_size": None,
    "use_linear_projection": False,
    "upcast_attention": False,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "use_inflated_groupnorm": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "unet_use_cross_frame_attention": None,
    "unet_use_temporal_attention": None,
    "use_audio_module": None,
    "audio_attention_dim": None,
}


def official_unet_config() -> dict:
    """The official `model:` section (configs/unet/stage2.yaml == stage2_512.yaml)."""
    return copy.deepcopy(_OFFICIAL)


def tiny_unet_config() -> dict:
    """The golden tiny config (same network shape, narrow channels) for tests and `tiny-random`."""
    cfg = official_unet_config()
    cfg.update(copy.deepcopy(_TINY_OVERRIDES))
    return cfg


@dataclass(frozen=True)
class MotionConfig:
    """Temporal (motion) module settings."""

    num_heads: int
    num_blocks: int
    num_attention_blocks: int
    max_frames: int  # length of the sinusoidal position table


@dataclass(frozen=True)
class UNetConfig:
    """Validated network shape; built from a `model:` dict by `parse_unet_config`."""

    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    heads: tuple[int, ...]  # spatial attention heads per down level
    cross_attention_dim: int
    norm_num_groups: int
    norm_eps: float
    flip_sin_to_cos: bool
    freq_shift: float
    downsample_padding: int
    mid_block_scale_factor: float
    center_input_sample: bool
    down_motion: tuple[bool, ...]
    up_motion: tuple[bool, ...]
    motion: MotionConfig | None

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4


def _require(cfg: dict, key: str, expected: Any) -> None:
    found = cfg.get(key, expected)
    expect(found == expected, InvalidInputError, f"unet config {key!r}", expected, found)


def _motion_config(kw: dict) -> MotionConfig:
    types = list(kw.get("attention_block_types", [TEMPORAL_SELF, TEMPORAL_SELF]))
    expect(all(t == TEMPORAL_SELF for t in types) and types, InvalidInputError,
           "motion_module_kwargs.attention_block_types", f"a list of {TEMPORAL_SELF!r}", types)
    _require(kw, "temporal_position_encoding", True)
    _require(kw, "temporal_attention_dim_div", 1)
    known = set(_MOTION_KWARGS) | {"cross_attention_dim", "cross_frame_attention_mode"}
    unknown = sorted(set(kw) - known)
    expect(not unknown, InvalidInputError, "motion_module_kwargs keys", sorted(known), unknown)
    return MotionConfig(
        num_heads=int(kw.get("num_attention_heads", 8)),
        num_blocks=int(kw.get("num_transformer_block", 1)),
        num_attention_blocks=len(types),
        max_frames=int(kw.get("temporal_position_encoding_max_len", 24)),
    )


def parse_unet_config(cfg: dict) -> UNetConfig:
    """Validate a `model:` section and return the network shape it describes (InvalidInputError if unsupported)."""
    expect(isinstance(cfg, dict), InvalidInputError, "unet config", "a dict (the `model:` section)", type(cfg).__name__)
    known = set(_OFFICIAL) | set(_IGNORED_AT_DEFAULT)
    unknown = sorted(k for k in cfg if k not in known and not str(k).startswith("_"))
    expect(not unknown, InvalidInputError, "unet config keys", "keys of the official model section", unknown)
    for key, default in _IGNORED_AT_DEFAULT.items():
        if key != "sample_size":
            _require(cfg, key, default)
    _require(cfg, "act_fn", "silu")
    _require(cfg, "add_audio_layer", True)
    _require(cfg, "mid_block_type", MID_BLOCK)
    _require(cfg, "resnet_time_scale_shift", "default")
    _require(cfg, "motion_module_type", "Vanilla")
    _require(cfg, "motion_module_mid_block", False)

    channels = tuple(int(c) for c in cfg.get("block_out_channels", _OFFICIAL["block_out_channels"]))
    down = tuple(cfg.get("down_block_types", _OFFICIAL["down_block_types"]))
    up = tuple(cfg.get("up_block_types", _OFFICIAL["up_block_types"]))
    n = len(channels)
    expect(len(down) == n and len(up) == n, InvalidInputError, "number of down/up block types",
           f"{n} each (= len(block_out_channels))", (len(down), len(up)))
    expect(set(down) <= {CROSS_ATTN_DOWN, PLAIN_DOWN}, InvalidInputError, "down_block_types",
           [CROSS_ATTN_DOWN, PLAIN_DOWN], down)
    expect(set(up) <= {CROSS_ATTN_UP, PLAIN_UP}, InvalidInputError, "up_block_types", [CROSS_ATTN_UP, PLAIN_UP], up)

    heads_cfg = cfg.get("attention_head_dim", _OFFICIAL["attention_head_dim"])
    heads = tuple(int(h) for h in heads_cfg) if isinstance(heads_cfg, (list, tuple)) else (int(heads_cfg),) * n
    groups = int(cfg.get("norm_num_groups", 32))
    for c, h in zip(channels, heads):
        expect(c % h == 0 and c % groups == 0, InvalidInputError, "block_out_channels",
               f"multiples of the head count {h} and of norm_num_groups {groups}", c)

    use_motion = bool(cfg.get("use_motion_module", True))
    resolutions = set(cfg.get("motion_module_resolutions", [1, 2, 4, 8]))
    decoder_only = bool(cfg.get("motion_module_decoder_only", False))
    down_motion = tuple(use_motion and not decoder_only and 2**i in resolutions for i in range(n))
    up_motion = tuple(use_motion and 2 ** (n - 1 - i) in resolutions for i in range(n))
    motion = _motion_config(dict(cfg.get("motion_module_kwargs", _MOTION_KWARGS))) if use_motion else None
    if motion is not None:
        for c in channels:
            expect(c % motion.num_heads == 0 and c % MOTION_NORM_GROUPS == 0, InvalidInputError,
                   "block_out_channels (motion modules)",
                   f"multiples of {motion.num_heads} heads and {MOTION_NORM_GROUPS} groups", c)

    return UNetConfig(
        in_channels=int(cfg.get("in_channels", 13)),
        out_channels=int(cfg.get("out_channels", 4)),
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=int(cfg.get("layers_per_block", 2)),
        heads=heads,
        cross_attention_dim=int(cfg.get("cross_attention_dim", 384)),
        norm_num_groups=groups,
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
        freq_shift=float(cfg.get("freq_shift", 0)),
        downsample_padding=int(cfg.get("downsample_padding", 1)),
        mid_block_scale_factor=float(cfg.get("mid_block_scale_factor", 1)),
        center_input_sample=bool(cfg.get("center_input_sample", False)),
        down_motion=down_motion,
        up_motion=up_motion,
        motion=motion,
    )
