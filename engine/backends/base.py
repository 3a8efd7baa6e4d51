"""The one interface every backend implements: per-network executors, and the runners built on them.

An executor runs one network of `export.specs` on named tensors. Runners turn executors into the call
interfaces the pipeline uses (U-Net forward / forward_full / forward_shallow, VAE posterior / decode,
audio encoder), identical for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch
from torch import Tensor

from engine.constants import VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from engine.errors import InvalidInputError, expect

TIMESTEP_DTYPE = torch.float32  # every graph takes timesteps as float32 [B]


class Executor(Protocol):
    """Runs one network: named input tensors in, named output tensors out (on `device`)."""

    network: str
    backend: str
    device: torch.device
    input_dtypes: Mapping[str, torch.dtype | None]  # what each input is cast to (None: left as given)

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


def run_executor(executor: Executor, feeds: Mapping[str, Tensor], out_dtype: torch.dtype, out_device: torch.device) -> dict[str, Tensor]:
    """Cast/move `feeds` to what `executor` takes, run it, return outputs in the caller's dtype and device."""
    prepared = {
        name: t.to(device=executor.device, dtype=executor.input_dtypes[name] or t.dtype).contiguous()
        for name, t in feeds.items()
    }
    outputs = executor(prepared)
    return {name: t.to(device=out_device, dtype=out_dtype) for name, t in outputs.items()}


def as_timesteps(timestep: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """0-d, [1] or [B] timestep (int or float) -> float32 [B] on `device`."""
    t = torch.as_tensor(timestep, device=device).reshape(-1)
    expect(t.numel() in (1, batch), InvalidInputError, "timestep", f"a scalar or [{batch}]", tuple(t.shape))
    return t.to(TIMESTEP_DTYPE).expand(batch).contiguous()


class _Runner:
    """Placement shared by every runner: the device and main dtype of its first executor."""

    def __init__(self, primary: Executor, main_input: str):
        self.backend = primary.backend
        self.device = primary.device
        self.dtype = primary.input_dtypes[main_input] or torch.float32


class UNetRunner(_Runner):
    """U-Net with the LatentSyncUNet call interface, on any backend (DeepCache included)."""

    def __init__(self, full: Executor, shallow: Executor):
        super().__init__(full, "sample")
        self.full, self.shallow = full, shallow

    def _feeds(self, sample: Tensor, timestep, encoder_hidden_states: Tensor) -> dict[str, Tensor]:
        expect(sample.ndim == 5, InvalidInputError, "unet sample rank", "[B, 13, F, H, W]", tuple(sample.shape))
        return {
            "sample": sample,
            "timestep": as_timesteps(timestep, sample.shape[0], sample.device),
            "encoder_hidden_states": encoder_hidden_states,
        }

    def forward_full(self, sample: Tensor, timestep, encoder_hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        # sample [B,13,F,h,w]; ehs [B*F,50,C] -> (noise [B,4,F,h,w], deep_feature [B,C0,F,h,w])
        out = run_executor(self.full, self._feeds(sample, timestep, encoder_hidden_states), sample.dtype, sample.device)
        return out["noise_pred"], out["deep_feature"]

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor) -> Tensor:
        return self.forward_full(sample, timestep, encoder_hidden_states)[0]

    def forward_shallow(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, deep_feature: Tensor) -> Tensor:
        feeds = {**self._feeds(sample, timestep, encoder_hidden_states), "deep_feature": deep_feature}
        return run_executor(self.shallow, feeds, sample.dtype, sample.device)["noise_pred"]

    __call__ = forward


class VaeRunner(_Runner):
    """VAE posterior and decoder, on any backend; `encode` / `decode_latents` add the official scaling."""

    def __init__(self, encoder: Executor, decoder: Executor):
        super().__init__(encoder, "pixels")
        self.encoder, self.decoder = encoder, decoder

    def posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        # pixels [f,3,R,R] in [-1,1] -> (mean, std) [f,4,R/8,R/8], unscaled
        from engine.models.vae import check_pixels

        check_pixels(pixels)
        out = run_executor(self.encoder, {"pixels": pixels}, pixels.dtype, pixels.device)
        return out["mean"], out["std"]

    def decode(self, z: Tensor) -> Tensor:
        # z [f,4,h,w] unscaled -> images [f,3,8h,8w], not clamped
        return run_executor(self.decoder, {"latents": z}, z.dtype, z.device)["images"]

    def encode(self, pixels: Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents, as engine.models.vae.vae_encode (one randn draw of the latent shape when `sample`)."""
        from engine.models.vae import posterior_sample

        mean, std = self.posterior(pixels)
        return posterior_sample(mean, std, sample=sample, generator=generator)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images from scaled latents, as engine.models.vae.vae_decode."""
        from engine.models.vae import check_latents

        check_latents(latents)
        return self.decode(latents / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR)


class AudioRunner(_Runner):
    """Whisper encoder: mel [B,80,T] -> stacked features [B,T//2,5,C], on any backend."""

    def __init__(self, executor: Executor):
        super().__init__(executor, "mel")
        self.executor = executor

    def forward(self, mel: Tensor) -> Tensor:
        return run_executor(self.executor, {"mel": mel}, mel.dtype, mel.device)["features"]

    __call__ = forward


@dataclass
class Runners:
    """The three runners of one model, and which backend serves each group."""

    unet: UNetRunner
    vae: VaeRunner
    audio_encoder: AudioRunner
    choice: dict[str, str]  # group -> backend
    settings: dict[str, Any] = field(default_factory=dict)  # device options in effect, artifacts used (for reports)
