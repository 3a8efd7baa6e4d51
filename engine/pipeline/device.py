"""Device and precision choice, made once and logged (never silently hardware-dependent)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.errors import BackendUnavailableError, InvalidInputError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)


def choose_placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """Resolve `device` ('auto'|'cpu'|'cuda[:N]') and `dtype` ('auto'|'fp32'|'fp16'|'bf16').

    auto device: CUDA when available, else CPU. auto dtype: fp16 on CUDA (the
    official choice on Ampere and newer), fp32 on CPU. An explicit CUDA request
    without CUDA raises instead of falling back.
    """
    device = (device or "auto").lower()
    dtype = (dtype or "auto").lower()
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        why = "auto: CUDA available" if dev.type == "cuda" else "auto: no CUDA device, using CPU"
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise InvalidInputError(f"device: expected auto, cpu or cuda[:N], found {device!r}") from exc
        why = "requested"
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device: expected a CUDA device for {device!r}, found none (torch {torch.__version__})")
    if dtype == "auto":
        dt = torch.float16 if dev.type == "cuda" else torch.float32
        why += f"; dtype auto -> {'fp16 on CUDA' if dev.type == 'cuda' else 'fp32 on CPU'}"
    elif dtype in DTYPES:
        dt = DTYPES[dtype]
        if dev.type == "cpu" and dt == torch.float16:
            raise InvalidInputError("dtype: fp16 is not supported on CPU; expected fp32 or bf16 on CPU, found fp16")
    else:
        raise InvalidInputError(f"dtype: expected one of auto, {', '.join(DTYPES)}; found {dtype!r}")
    placement = Placement(dev, dt, why)
    log.info("device %s, dtype %s (%s)", dev, placement.dtype_name, why)
    return placement
