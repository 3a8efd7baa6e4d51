"""One export spec per network: names, shapes, dynamic axes, sample inputs and TensorRT profile.

ONNX export, engine build and every runtime read these specs, so they cannot drift apart.
A tensor's shape is a tuple of dims; a dim is an int, a static geometry field (``"in_channels"``),
a dynamic axis (``"batch"``, ``"frames"``, ``"height"``, ``"width"``, ``"length"``), or a product /
floor-division of those (``"batch*frames"``, ``"8*height"``, ``"length//2"``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

import torch

from engine.errors import InvalidInputError, expect

# Dynamic axes: named in ONNX, fixed by a TensorRT profile. Everything else is static geometry.
DYNAMIC_AXES = ("batch", "frames", "height", "width", "length")
LATENT_DOWNSAMPLE = 8  # VAE pixels per latent
WHISPER_WINDOW_MEL_FRAMES = 3000  # 30 s whisper window, in mel frames (10 ms hop)


def _check_positive_ints(config: object) -> None:
    """InvalidInputError naming the first field of a dataclass that is not a positive int."""
    for f in fields(config):
        value = getattr(config, f.name)
        expect(isinstance(value, int) and value > 0, InvalidInputError, f"{type(config).__name__}.{f.name}",
               "a positive int", value)


@dataclass(frozen=True)
class Geometry:
    """Static sizes of one model family; read from the loaded modules (see `geometry_of`)."""

    in_channels: int = 13  # U-Net input: 4 noisy + 1 mask + 4 masked + 4 reference
    out_channels: int = 4  # U-Net noise prediction
    deep_channels: int = 320  # DeepCache feature = block_out_channels[0]
    audio_tokens: int = 50  # 10 feature rows x 5 layers per frame
    cross_attention_dim: int = 384
    latent_channels: int = 4  # VAE latent
    image_channels: int = 3
    mel_bins: int = 80
    audio_layers: int = 5  # whisper: embeddings + one per block
    audio_width: int = 384  # whisper n_audio_state

    def __post_init__(self) -> None:
        _check_positive_ints(self)


@dataclass(frozen=True)
class ShapeSettings:
    """Concrete values for the dynamic axes of one call or one profile point."""

    batch: int = 1
    frames: int = 16
    height: int = 64  # latent rows (resolution / 8)
    width: int = 64
    length: int = WHISPER_WINDOW_MEL_FRAMES  # mel frames

    def __post_init__(self) -> None:
        _check_positive_ints(self)


@dataclass(frozen=True)
class BuildShape:
    """What a TensorRT profile is built for: the largest chunk and the model's latent size."""

    batch: int = 2  # CFG doubles the U-Net batch
    frames: int = 16  # official chunk
    latent_size: int = 64  # 512 px -> 64, 256 px -> 32
    audio_batch: int = 4  # 30 s whisper windows per call (engine.audio.features.WINDOW_BATCH)
    min_frames: int = 1  # last chunk may be shorter

    def __post_init__(self) -> None:
        _check_positive_ints(self)
        expect(self.min_frames <= self.frames, InvalidInputError, "BuildShape.min_frames", f"<= frames ({self.frames})", self.min_frames)


Dim = int | str
Shape = tuple[Dim, ...]
# Per dynamic axis: (min, opt, max); each an int or a BuildShape field name.
ProfileRule = Mapping[str, tuple[Dim, Dim, Dim]]


@dataclass(frozen=True)
class NetworkSpec:
    """Everything export, build and runtime need to know about one network's graph boundary."""

    name: str
    inputs: Mapping[str, Shape]  # ordered: the call order of the exported wrapper
    outputs: Mapping[str, Shape]
    profile_rule: ProfileRule
    sample_settings: ShapeSettings  # shapes used for the traced sample input
    description: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX `dynamic_axes`: every dim that mentions a dynamic axis gets a name."""
        axes: dict[str, dict[int, str]] = {}
        for name, shape in {**self.inputs, **self.outputs}.items():
            named = {i: _axis_name(d) for i, d in enumerate(shape) if _is_dynamic(d)}
            if named:
                axes[name] = named
        return axes

    def shapes(self, geometry: Geometry, settings: ShapeSettings) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output."""
        env = {**asdict(geometry), **asdict(settings)}
        return {name: tuple(_eval_dim(d, env) for d in shape) for name, shape in {**self.inputs, **self.outputs}.items()}

    def input_shapes(self, geometry: Geometry, settings: ShapeSettings) -> dict[str, tuple[int, ...]]:
        all_shapes = self.shapes(geometry, settings)
        return {name: all_shapes[name] for name in self.inputs}

    def profile_settings(self, build: BuildShape) -> tuple[ShapeSettings, ShapeSettings, ShapeSettings]:
        """(min, opt, max) values of the dynamic axes for a TensorRT optimisation profile."""
        env = asdict(build)
        points = []
        for k in range(3):
            values = {axis: _eval_dim(rule[k], env) for axis, rule in self.profile_rule.items()}
            points.append(ShapeSettings(**values))
        return points[0], points[1], points[2]

    def profile(self, geometry: Geometry, build: BuildShape) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT profile: input name -> (min shape, opt shape, max shape)."""
        lo, opt, hi = (self.input_shapes(geometry, s) for s in self.profile_settings(build))
        return {name: (lo[name], opt[name], hi[name]) for name in self.inputs}

    def sample_inputs(
        self,
        geometry: Geometry,
        settings: ShapeSettings | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Deterministic random inputs with the spec's shapes (timesteps are valid DDIM steps)."""
        generator = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.input_shapes(geometry, settings or self.sample_settings).items():
            if name == "timestep":
                # [B] float32 in [1, 999]; always float32, whatever the network dtype.
                values = torch.randint(1, 1000, shape, generator=generator).to(torch.float32)
                out[name] = values.to(device)
            else:
                out[name] = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        return out

    def settings_for(self, shapes: Mapping[str, tuple[int, ...]]) -> ShapeSettings:
        """The dynamic-axis values implied by concrete input shapes (axes the spec does not use keep defaults)."""
        values: dict[str, int] = {}
        for name, shape in self.inputs.items():
            for dim, size in zip(shape, shapes.get(name, ())):
                solved = _solve_dim(dim, int(size))
                if solved is not None:
                    values.setdefault(*solved)
        return replace(ShapeSettings(), **values)

    def check_inputs(self, tensors: Mapping[str, torch.Tensor], geometry: Geometry) -> ShapeSettings:
        """Raise InvalidInputError unless every input has the spec's rank, static dims and consistent dynamic dims."""
        for name, shape in self.inputs.items():
            expect(name in tensors, InvalidInputError, f"{self.name} input", f"'{name}'", sorted(tensors))
            found = tuple(tensors[name].shape)
            expect(len(found) == len(shape), InvalidInputError, f"{self.name}.{name} rank", len(shape), found)
        settings = self.settings_for({name: tuple(t.shape) for name, t in tensors.items()})
        for name, want in self.input_shapes(geometry, settings).items():
            found = tuple(tensors[name].shape)
            expect(found == want, InvalidInputError, f"{self.name}.{name} shape", want, found)
        return settings


_TOKEN = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*|\d+)\s*$")


def _terms(dim: str) -> tuple[list[str], str | None]:
    """'8*height' -> (['8','height'], None); 'length//2' -> (['length'], '2')."""
    numerator, _, divisor = dim.partition("//")
    return numerator.split("*"), (divisor.strip() or None)


def _is_dynamic(dim: Dim) -> bool:
    if isinstance(dim, int):
        return False
    terms, divisor = _terms(dim)
    return any(t.strip() in DYNAMIC_AXES for t in terms + ([divisor] if divisor else []))


def _solve_dim(dim: Dim, size: int) -> tuple[str, int] | None:
    """(axis, value) when `dim` is one dynamic axis times integers ('frames', '8*height'); else None."""
    if isinstance(dim, int):
        return None
    terms, divisor = _terms(dim)
    names = [t.strip() for t in terms if t.strip() in DYNAMIC_AXES]
    factors = [t.strip() for t in terms if t.strip() not in DYNAMIC_AXES]
    if divisor or len(names) != 1 or not all(f.isdigit() for f in factors):
        return None
    scale = 1
    for f in factors:
        scale *= int(f)
    return names[0], max(size // scale, 1)


def _axis_name(dim: str) -> str:
    """ONNX dim_param for an expression: 'batch*frames' -> 'batch_x_frames', 'length//2' -> 'length_div_2'."""
    return dim.replace(" ", "").replace("//", "_div_").replace("*", "_x_")


def _eval_dim(dim: Dim, env: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    terms, divisor = _terms(dim)
    value = 1
    for term in terms:
        value *= _eval_token(term, env)
    if divisor:
        value //= _eval_token(divisor, env)
    return value


def _eval_token(token: str, env: Mapping[str, int]) -> int:
    match = _TOKEN.match(token)
    expect(match is not None, InvalidInputError, "spec dim token", "a name or an int", token)
    word = match.group(1)
    if word.isdigit():
        return int(word)
    expect(word in env, InvalidInputError, "spec dim", f"one of {sorted(env)}", word)
    return int(env[word])


# Profile rules: the latent size is fixed per model; batch and frames range up to the build shape.
_LATENT = ("latent_size", "latent_size", "latent_size")
_UNET_PROFILE: ProfileRule = {
    "batch": (1, "batch", "batch"),
    "frames": ("min_frames", "frames", "frames"),
    "height": _LATENT,
    "width": _LATENT,
}
_VAE_PROFILE: ProfileRule = {"batch": (1, "frames", "frames"), "height": _LATENT, "width": _LATENT}
_AUDIO_PROFILE: ProfileRule = {
    "batch": (1, 1, "audio_batch"),  # clips under 30 s are one window
    "length": (WHISPER_WINDOW_MEL_FRAMES,) * 3,
}
_UNET_SAMPLE = ShapeSettings(batch=2, frames=3, height=16, width=16)  # distinct sizes keep the trace honest
_UNET_INPUTS: dict[str, Shape] = {
    "sample": ("batch", "in_channels", "frames", "height", "width"),
    "timestep": ("batch",),
    "encoder_hidden_states": ("batch*frames", "audio_tokens", "cross_attention_dim"),
}
_NOISE: Shape = ("batch", "out_channels", "frames", "height", "width")
_DEEP: Shape = ("batch", "deep_channels", "frames", "height", "width")
_LATENT_SHAPE: Shape = ("batch", "latent_channels", "height", "width")
_IMAGE_SHAPE: Shape = ("batch", "image_channels", "8*height", "8*width")

SPECS: dict[str, NetworkSpec] = {
    "unet": NetworkSpec(
        name="unet",
        inputs=_UNET_INPUTS,
        outputs={"noise_pred": _NOISE, "deep_feature": _DEEP},
        profile_rule=_UNET_PROFILE,
        sample_settings=_UNET_SAMPLE,
        description="full U-Net pass; also returns the DeepCache feature (up_blocks[3].motion_modules[1] output)",
    ),
    "unet_shallow": NetworkSpec(
        name="unet_shallow",
        inputs={**_UNET_INPUTS, "deep_feature": _DEEP},
        outputs={"noise_pred": _NOISE},
        profile_rule=_UNET_PROFILE,
        sample_settings=_UNET_SAMPLE,
        description="DeepCache shallow pass: temb, conv_in, up_blocks[3] layer 2 and the head",
    ),
    "vae_encoder": NetworkSpec(
        name="vae_encoder",
        inputs={"pixels": _IMAGE_SHAPE},
        outputs={"mean": _LATENT_SHAPE, "std": _LATENT_SHAPE},
        profile_rule=_VAE_PROFILE,
        sample_settings=ShapeSettings(batch=2, height=8, width=8),
        description="VAE posterior, unscaled: std = exp(0.5 * clamp(logvar, -30, 20))",
    ),
    "vae_decoder": NetworkSpec(
        name="vae_decoder",
        inputs={"latents": _LATENT_SHAPE},
        outputs={"images": _IMAGE_SHAPE},
        profile_rule=_VAE_PROFILE,
        sample_settings=ShapeSettings(batch=2, height=8, width=8),
        description="VAE decoder on unscaled latents (AutoencoderKL.decode(z).sample), not clamped",
    ),
    "audio_encoder": NetworkSpec(
        name="audio_encoder",
        inputs={"mel": ("batch", "mel_bins", "length")},
        outputs={"features": ("batch", "length//2", "audio_layers", "audio_width")},
        profile_rule=_AUDIO_PROFILE,
        sample_settings=ShapeSettings(batch=1, length=WHISPER_WINDOW_MEL_FRAMES),
        description="whisper encoder, stacked per-layer output (embeddings + each block), no ln_post",
    ),
}

# Networks served together by one backend choice (`--backend unet=tensorrt,vae=torch`).
NETWORK_GROUPS: dict[str, tuple[str, ...]] = {
    "unet": ("unet", "unet_shallow"),
    "vae": ("vae_encoder", "vae_decoder"),
    "audio": ("audio_encoder",),
}


def get_spec(network: str) -> NetworkSpec:
    """The spec for `network`, or InvalidInputError naming the known ones."""
    expect(network in SPECS, InvalidInputError, "network", f"one of {sorted(SPECS)}", network)
    return SPECS[network]
