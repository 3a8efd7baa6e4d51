"""Device and precision choice, made once and logged (never silently hardware-dependent)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

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


@dataclass(frozen=True)
class DeviceOptions:
    """CUDA math switches and layouts for a run; each is a measured option (benchmarks/gpu_check.py) and the
    values in effect are recorded in the run's settings.

    The defaults are what the official run has: torch's own TF32 defaults (matmuls without, cuDNN convolutions
    with TF32; they only touch fp32 work), no cuDNN autotuning, NCHW VAE weights, and whisper encoding in the
    run dtype on CUDA (fp16 by default, as the official GPU run) and fp32 on the CPU.
    """

    tf32: bool | None = None  # None: leave torch's defaults; True/False: both matmul and cuDNN TF32
    cudnn_benchmark: bool | None = None  # None: torch's default (off)
    vae_channels_last: bool = False  # VAE weights in channels_last (NHWC convolutions on tensor cores)
    whisper_run_dtype: bool = True  # whisper encodes in the run dtype on CUDA (official), fp32 on CPU

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def apply_device_options(models: Any, device: torch.device | str, dtype: torch.dtype,
                         options: DeviceOptions = DeviceOptions()) -> dict[str, Any]:
    """Apply `options` for a run of `models` (engine.weights.LoadedModels) on `device`; returns what is in effect.

    TF32 and cudnn.benchmark are process-wide torch switches: the last run to set them wins, and every run
    records the values it ran with.
    """
    from engine.audio.whisper import follow_run_dtype

    if options.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = options.tf32
        torch.backends.cudnn.allow_tf32 = options.tf32
    if options.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
    if options.vae_channels_last and getattr(models, "vae", None) is not None:
        torch.nn.Module.to(models.vae, memory_format=torch.channels_last)  # diffusers' .to takes no memory_format
    whisper = torch.float32
    if getattr(models, "audio_encoder", None) is not None:
        run_dtype = dtype if options.whisper_run_dtype else torch.float32
        whisper = follow_run_dtype(models.audio_encoder, device, run_dtype)
    applied = {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "vae_channels_last": options.vae_channels_last,
        "whisper_dtype": str(whisper).removeprefix("torch."),
    }
    log.debug("device options in effect: %s", applied)
    return applied
