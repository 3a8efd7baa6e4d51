"""nn.Module adapters giving each loaded network exactly its spec's inputs and outputs.

The same adapters are traced for ONNX and run eagerly (or under torch.compile) by the torch
backends, so every backend computes the same function of the same named tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import InvalidInputError, expect
from export.specs import Geometry, get_spec


class UNetFull(nn.Module):
    """(sample, timestep, encoder_hidden_states) -> (noise_pred, deep_feature)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        # sample [B,13,F,h,w]; timestep [B] f32; ehs [B*F,50,C] -> ([B,4,F,h,w], [B,320,F,h,w])
        noise, deep = self.unet.forward_full(sample, timestep, encoder_hidden_states)
        return noise, deep


class UNetShallow(nn.Module):
    """(sample, timestep, encoder_hidden_states, deep_feature) -> noise_pred (DeepCache step)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, deep_feature):
        return self.unet.forward_shallow(sample, timestep, encoder_hidden_states, deep_feature)


class VaeEncoder(nn.Module):
    """pixels [f,3,R,R] in [-1,1] -> (mean, std) of the posterior, unscaled, [f,4,R/8,R/8]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels):
        # diffusers DiagonalGaussianDistribution: logvar clamped to [-30, 20], std = exp(0.5 * logvar)
        posterior = self.vae.encode(pixels, return_dict=False)[0]
        return posterior.mean, posterior.std


class VaeDecoder(nn.Module):
    """latents [f,4,h,w] (unscaled) -> images [f,3,8h,8w], not clamped."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents, return_dict=False)[0]


class AudioEncoder(nn.Module):
    """mel [B,80,T] -> stacked per-layer features [B,T//2,5,C]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, mel):
        return self.encoder(mel)


_WRAPPERS: dict[str, type[nn.Module]] = {
    "unet": UNetFull,
    "unet_shallow": UNetShallow,
    "vae_encoder": VaeEncoder,
    "vae_decoder": VaeDecoder,
    "audio_encoder": AudioEncoder,
}


def wrap(network: str, module: nn.Module) -> nn.Module:
    """The spec-shaped adapter around a loaded module (U-Net, AutoencoderKL or whisper encoder)."""
    get_spec(network)  # validates the name
    wrapper = _WRAPPERS[network](module)
    wrapper.eval()
    return wrapper


def _config(module: nn.Module) -> dict[str, Any]:
    cfg = getattr(module, "config", None)
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    return dict(cfg)  # diffusers FrozenDict


def _audio_geometry(encoder: nn.Module) -> dict[str, int]:
    """Mel bins, stacked layers and width of a whisper-style encoder (transformers or openai layout)."""
    for candidate in (encoder, getattr(encoder, "encoder", None)):
        cfg = _config(candidate) if candidate is not None else {}
        if "d_model" in cfg:  # transformers WhisperConfig
            return {
                "mel_bins": int(cfg["num_mel_bins"]),
                "audio_layers": int(cfg["encoder_layers"]) + 1,
                "audio_width": int(cfg["d_model"]),
            }
        if "n_audio_state" in cfg:  # openai dims
            return {
                "mel_bins": int(cfg["n_mels"]),
                "audio_layers": int(cfg["n_audio_layer"]) + 1,
                "audio_width": int(cfg["n_audio_state"]),
            }
    dims = getattr(encoder, "dims", None)
    if isinstance(dims, dict) and "n_audio_state" in dims:
        return {
            "mel_bins": int(dims["n_mels"]),
            "audio_layers": int(dims["n_audio_layer"]) + 1,
            "audio_width": int(dims["n_audio_state"]),
        }
    raise InvalidInputError(
        f"audio encoder {type(encoder).__name__}: expected a whisper config (d_model or n_audio_state), found none"
    )


def geometry_of(*, unet: nn.Module | None = None, vae: nn.Module | None = None, audio_encoder: nn.Module | None = None) -> Geometry:
    """Geometry read from whichever modules are given; the rest keeps the official defaults."""
    values: dict[str, int] = {}
    if unet is not None:
        cfg = _config(unet)
        expect("block_out_channels" in cfg, InvalidInputError, "U-Net config", "block_out_channels", sorted(cfg))
        values.update(
            in_channels=int(cfg["in_channels"]),
            out_channels=int(cfg["out_channels"]),
            deep_channels=int(cfg["block_out_channels"][0]),
            cross_attention_dim=int(cfg["cross_attention_dim"]),
        )
    if vae is not None:
        cfg = _config(vae)
        values.update(latent_channels=int(cfg["latent_channels"]), image_channels=int(cfg["in_channels"]))
    if audio_encoder is not None:
        values.update(_audio_geometry(audio_encoder))
    return Geometry(**values)


def geometry_for_network(network: str, module: nn.Module) -> Geometry:
    """Geometry of the one module that `network` is exported from."""
    kind = {"unet": "unet", "unet_shallow": "unet", "vae_encoder": "vae", "vae_decoder": "vae"}.get(network, "audio_encoder")
    return geometry_of(**{kind: module})


def graph_dtype(network: str, module: nn.Module) -> torch.dtype:
    """The dtype a network's graph computes in: the module's, or the whisper encoder's compute dtype (fp32 weights
    run in the mel's dtype, fp16 on CUDA as the official GPU run has it)."""
    if network == "audio_encoder":
        compute = getattr(module, "compute_dtype", None)
        if compute is not None:
            return compute
    return module_dtype(module)


def module_dtype(module: nn.Module) -> torch.dtype:
    """dtype of the module's first floating parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
