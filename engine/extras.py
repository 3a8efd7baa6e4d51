"""Optional extras: which pip extra provides which module, checked before a command needs it.

A command that needs an optional runtime calls `require("serve")` first, so a missing
package ends in one plain message naming the extra to install (exit 7), never in a
`ModuleNotFoundError` traceback after work has started.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from engine.errors import BackendUnavailableError


@dataclass(frozen=True)
class Extra:
    """One `pip install -e ".[name]"` extra and the import names that show it is present.

    `distributions`: pip distributions that must be installed too, where the import name alone cannot tell
    (onnxruntime-gpu and onnxruntime install the same `onnxruntime` module)."""

    name: str
    modules: tuple[str, ...]
    purpose: str
    distributions: tuple[str, ...] = ()


EXTRAS: dict[str, Extra] = {
    extra.name: extra
    for extra in (
        Extra("cpu", ("onnxruntime",), "ONNX Runtime on the CPU (backend onnxruntime, InsightFace faces)"),
        Extra("gpu", ("onnxruntime",), "ONNX Runtime with CUDA (backend onnxruntime on a GPU)",
              distributions=("onnxruntime-gpu",)),
        Extra("trt", ("tensorrt",), "TensorRT engines (engine build, backend tensorrt)"),
        Extra("face", ("ai_edge_litert",), "the offline mediapipe face models"),
        Extra("serve", ("websockets", "pydantic"), "the WebSocket streaming server (engine serve)"),
        Extra("plot", ("matplotlib",), "PNG plots (engine bench, engine eval --sweep, benchmarks)"),
        Extra("ray", ("ray",), "batch and serving on a Ray cluster (engine batch --ray, engine serve --ray)"),
        Extra("pipecat", ("pipecat",), "the Pipecat video service", distributions=("pipecat-ai",)),
        Extra("webrtc", ("pipecat", "aiortc", "fastapi", "uvicorn", "pipecat_ai_small_webrtc_prebuilt"),
              "the browser demo over WebRTC (engine demo)", distributions=("pipecat-ai",)),
        Extra("livekit", ("livekit",), "the LiveKit Agents avatar (engine avatar-worker)",
              distributions=("livekit-agents",)),
        Extra("gpu-video", ("torchcodec", "PyNvVideoCodec"),
              "GPU video I/O: NVDEC decode and NVENC encode (engine run --video-io gpu)"),
    )
}


class MissingExtraError(BackendUnavailableError):
    """An optional package that a command needs is not installed (exit 7, like any unavailable backend)."""


# top-level import name -> the extra that installs it (also the modules those packages import themselves)
MODULE_EXTRAS: dict[str, str] = {
    **{module: extra.name for extra in reversed(EXTRAS.values()) for module in extra.modules},
    "onnxruntime": "cpu", "fastapi": "ray", "starlette": "ray", "uvicorn": "ray",
}
# core dependencies: missing means a broken install, not a missing extra
CORE_MODULES = ("torch", "onnx", "onnxscript", "onnx_ir", "av", "cv2", "numpy", "diffusers", "transformers",
                "safetensors", "huggingface_hub", "tqdm")


def missing_module_error(exc: ModuleNotFoundError, *, what: str | None = None) -> BackendUnavailableError | None:
    """The typed error for an import that failed because a package is not installed, or None when unknown.

    An optional package names its extra (MissingExtraError); a core one says the install is incomplete.
    """
    top = (exc.name or "").split(".")[0]
    subject = f"{what}: " if what else ""
    if top in MODULE_EXTRAS:
        name = MODULE_EXTRAS[top]
        return MissingExtraError(
            f"{subject}expected the [{name}] extra ({EXTRAS[name].purpose}), found {exc.name} not installed; "
            f'install it with: pip install -e ".[{name}]"')
    if top in CORE_MODULES:
        return MissingExtraError(
            f"{subject}expected the core dependency {top} (in every install of latentsync-engine), found it not "
            'installed; reinstall with: pip install -e .')
    return None


def import_optional(module: str, extra: str, *, what: str | None = None):  # noqa: ANN201 - the module
    """`importlib.import_module(module)`, raising MissingExtraError naming `extra` when a package is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"{what or EXTRAS[extra].purpose}: expected the [{extra}] extra, found {exc.name} not installed; "
            f'install it with: pip install -e ".[{extra}]"') from exc


def missing_modules(name: str) -> list[str]:
    """Import names (and pip distributions) of extra `name` that cannot be found, without importing them."""
    import importlib.metadata

    extra = EXTRAS[name]
    missing = [module for module in extra.modules if importlib.util.find_spec(module) is None]
    for dist in extra.distributions:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def is_present(name: str) -> bool:
    return not missing_modules(name)


def require(name: str, *, what: str | None = None) -> None:
    """Raise MissingExtraError naming the extra to install unless every module of extra `name` is importable."""
    missing = missing_modules(name)
    if missing:
        extra = EXTRAS[name]
        raise MissingExtraError(
            f"{what or extra.purpose}: expected the [{name}] extra, found {', '.join(missing)} not installed; "
            f'install it with: pip install -e ".[{name}]"'
        )


def status() -> dict[str, dict]:
    """{extra: {"present": bool, "missing": [...], "purpose": str}} for `engine doctor`."""
    return {
        name: {"present": not (missing := missing_modules(name)), "missing": missing, "purpose": extra.purpose}
        for name, extra in EXTRAS.items()
    }
