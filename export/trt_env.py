"""The TensorRT version and GPU an engine is built for: the environment part of every engine key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.errors import BackendUnavailableError


@dataclass(frozen=True)
class TrtEnvironment:
    """What makes a serialized engine or timing cache portable: TensorRT version and GPU."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"

    def fields(self) -> dict[str, str]:
        return asdict(self)


def trt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can (import and a CUDA GPU)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising OSError
        return (f"tensorrt not importable ({type(exc).__name__}: {exc}); install the [trt] extra "
                "(pip install -e \".[trt]\"), or use `engine export` and --backend onnxruntime instead")
    return None


def detect_environment(device_index: int | None = None) -> TrtEnvironment:
    """The current TensorRT version and GPU; BackendUnavailableError when either is missing."""
    reason = trt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"tensorrt: expected TensorRT and a CUDA GPU, found {reason}")
    import tensorrt
    import torch

    index = torch.cuda.current_device() if device_index is None else device_index
    major, minor = torch.cuda.get_device_capability(index)
    return TrtEnvironment(tensorrt.__version__, torch.cuda.get_device_name(index), f"{major}.{minor}")
