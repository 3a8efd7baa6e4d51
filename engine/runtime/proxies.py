"""Thread-safe stand-ins for the networks that callers outside the engine core still call directly."""

from __future__ import annotations

import torch

from engine.errors import InvalidInputError, expect


class AudioEncoderProxy:
    """`core.audio_encoder`: mel [B,80,T] -> features [B,T//2,5,C], computed on the device thread.

    Callable from any thread; the result comes back on the mel's device in the mel's dtype (the
    runner moves the input to its executor). `device`/`dtype` say where the encoder itself runs.
    """

    def __init__(self, engine) -> None:
        self._engine = engine
        runner = engine.runners.audio_encoder
        self.device: torch.device = runner.device
        self.dtype: torch.dtype = runner.dtype

    def __call__(self, mel: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        expect(position_offset == 0, InvalidInputError, "audio encoder position_offset",
               "0 (backend runners encode whole windows)", position_offset)
        return self._engine.call(_encode, self._engine.runners.audio_encoder, mel)


def _encode(runner, mel: torch.Tensor) -> torch.Tensor:
    return runner(mel)


def vae_posterior_on_device(engine, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [f,4,R/8,R/8] of pixels [f,3,R,R] in [-1,1], computed on the device thread."""
    return engine.call(_posterior, engine.runners.vae, pixels)


def _posterior(runner, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return runner.posterior(pixels)
