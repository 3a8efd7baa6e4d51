"""Backend selection in one function: parse the request, reject what cannot run (saying why), build runners.

`auto` walks a fixed preference order per device, uses only artifacts that already exist (it never exports
or builds), and logs one line naming the choice per network group and the reason each candidate was
rejected. An explicit backend never falls back: it raises BackendUnavailableError (R18), or
IncompatibleEngineError when its artifacts are stale and building is not allowed (R15).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.backends.base import AudioRunner, Executor, Runners, UNetRunner, VaeRunner
from engine.errors import BackendUnavailableError, IncompatibleEngineError, InvalidInputError, expect
from export.specs import NETWORK_GROUPS, BuildShape, Geometry
from export.wrappers import geometry_of, module_device

log = logging.getLogger(__name__)

BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")
AUTO = "auto"
GROUP_ALIASES = {"audio_encoder": "audio", "whisper": "audio", "unet_shallow": "unet"}
GROUP_OF = {network: group for group, networks in NETWORK_GROUPS.items() for network in networks}
# Fastest first (measured by benchmarks/backends.py; see its results). CPU: compile is left out of
# `auto` because its first call per shape compiles for minutes.
AUTO_ORDER = {
    "cuda": ("tensorrt", "compile", "onnxruntime", "torch"),
    "cpu": ("onnxruntime", "torch"),
}


@dataclass(frozen=True)
class BackendOptions:
    """Where artifacts live and how they may be made."""

    artifact_dir: Path | None = None  # ONNX files + engines; default <engine cache>/artifacts/<model>
    allow_build: bool = True  # explicit onnxruntime/tensorrt may export/build what is missing (not `auto`)
    precision: str = "fp16"  # TensorRT engines
    batch: int = 2  # TensorRT profile: largest U-Net batch (CFG)
    frames: int = 16  # TensorRT profile: largest chunk
    ort_providers: tuple[Any, ...] | None = None  # e.g. ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    compile_mode: str | None = None  # torch.compile mode; default reduce-overhead on CUDA
    cuda_graphs: bool = True  # TensorRT executor


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why `backend` cannot run on `device` on this machine, or None when it can."""
    device = torch.device(device)
    expect(backend in BACKENDS, InvalidInputError, "backend", BACKENDS, backend)
    if backend == "torch":
        return None
    if backend == "compile":
        if device.type == "cuda":
            try:
                import triton  # noqa: F401
            except Exception as exc:
                return f"torch.compile on CUDA needs triton ({type(exc).__name__}: {exc})"
            return None
        if not shutil.which("g++") and not shutil.which("c++"):
            return "torch.compile on CPU needs a C++ compiler (g++), none on PATH"
        return None
    if backend == "onnxruntime":
        from engine.backends.ort_backend import ort_unavailable_reason

        return ort_unavailable_reason(device)
    from export.trt_env import trt_unavailable_reason

    if device.type != "cuda":
        return f"TensorRT needs a CUDA device, the models are on {device}"
    return trt_unavailable_reason()


def availability(device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """{backend: {"available": bool, "why_not": reason or None}} for `device` (default: CUDA if present)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = {}
    for backend in BACKENDS:
        reason = unavailable_reason(backend, device)
        report[backend] = {"available": reason is None, "why_not": reason}
    report["auto_order"] = {"device": str(device), "order": list(AUTO_ORDER[device.type])}
    return report


def parse_backend_request(text: str) -> dict[str, str]:
    """'auto' | 'tensorrt' | 'unet=tensorrt,vae=torch' -> {group: backend} for every group (missing: auto)."""
    text = (text or AUTO).strip().lower()
    allowed = (*BACKENDS, AUTO)
    if "=" not in text:
        expect(text in allowed, InvalidInputError, "backend", f"one of {allowed} or group=backend pairs", text)
        return {group: text for group in NETWORK_GROUPS}
    request = {group: AUTO for group in NETWORK_GROUPS}
    for part in filter(None, (p.strip() for p in text.split(","))):
        group, _, backend = (s.strip() for s in part.partition("="))
        group = GROUP_ALIASES.get(group, group)
        expect(group in NETWORK_GROUPS, InvalidInputError, "backend group", sorted(NETWORK_GROUPS), group)
        expect(backend in allowed, InvalidInputError, f"backend for {group}", allowed, backend)
        request[group] = backend
    return request


def default_artifact_dir(model_name: str) -> Path:
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / "artifacts" / model_name.replace("/", "_")


class BackendContext:
    """What building executors needs: modules per group, device, geometry, options and artifact folder."""

    def __init__(self, modules: dict[str, Any], *, name: str, resolution: int, device: torch.device,
                 options: BackendOptions):
        self.modules, self.device, self.options, self.resolution = modules, torch.device(device), options, resolution
        self.geometry: Geometry = geometry_of(unet=modules.get("unet"), vae=modules.get("vae"),
                                              audio_encoder=modules.get("audio"))
        self.artifact_dir = Path(options.artifact_dir or default_artifact_dir(name))
        self._hashes: dict[int, str] = {}

    def weights_hash(self, module) -> str:
        """sha256 of a module's weights, computed once per module (it keys ONNX files and engines)."""
        from export.artifacts import weights_sha256

        if id(module) not in self._hashes:
            self._hashes[id(module)] = weights_sha256(module)
        return self._hashes[id(module)]

    @classmethod
    def of(cls, models, device: torch.device, options: BackendOptions) -> "BackendContext":
        modules = {"unet": models.unet, "vae": models.vae, "audio": models.audio_encoder}
        return cls(modules, name=models.name, resolution=models.resolution, device=device, options=options)

    def build_shape(self) -> BuildShape:
        return BuildShape(batch=self.options.batch, frames=self.options.frames, latent_size=self.resolution // 8)


def _onnx_path(ctx: BackendContext, network: str, module, allow_build: bool) -> Path:
    from export.onnx_export import current_onnx

    return current_onnx(network, module, ctx.artifact_dir, allow_export=allow_build,
                        weights_hash=ctx.weights_hash(module))


def make_executor(backend: str, network: str, ctx: BackendContext, *, allow_build: bool) -> Executor:
    """One executor of `network` on `backend` (exports / builds artifacts only when `allow_build`)."""
    module = ctx.modules[GROUP_OF[network]]
    if backend == "torch":
        from engine.backends.torch_backend import TorchExecutor

        return TorchExecutor(network, module)
    if backend == "compile":
        from engine.backends.torch_backend import CompileExecutor

        return CompileExecutor(network, module, mode=ctx.options.compile_mode)
    onnx_path = _onnx_path(ctx, network, module, allow_build)
    if backend == "onnxruntime":
        from engine.backends.ort_backend import OrtExecutor

        return OrtExecutor(network, onnx_path, ctx.geometry, ctx.device, providers=ctx.options.ort_providers)
    from engine.backends.trt_backend import TrtExecutor
    from export.engines import ensure_engine
    from export.trt_builder import BuildSettings
    from export.trt_env import detect_environment

    engine = ensure_engine(network, onnx_path, ctx.artifact_dir, geometry=ctx.geometry, shape=ctx.build_shape(),
                           settings=BuildSettings(precision=ctx.options.precision),
                           env=detect_environment(ctx.device.index), no_build=not allow_build)
    return TrtExecutor(network, engine, ctx.geometry, ctx.device, cuda_graphs=ctx.options.cuda_graphs)


def _executors(backend: str, group: str, ctx: BackendContext, allow_build: bool) -> dict[str, Executor]:
    return {n: make_executor(backend, n, ctx, allow_build=allow_build) for n in NETWORK_GROUPS[group]}


def _explicit(backend: str, group: str, ctx: BackendContext) -> dict[str, Executor]:
    reason = unavailable_reason(backend, ctx.device)
    if reason is not None:
        raise BackendUnavailableError(f"{group} backend {backend}: expected it to run on {ctx.device}, found {reason}")
    return _executors(backend, group, ctx, ctx.options.allow_build)


def _auto(group: str, ctx: BackendContext, rejected: dict[tuple[str, str], list[str]]) -> tuple[str, dict[str, Executor]]:
    """First backend of AUTO_ORDER that runs with existing artifacts; records (backend, reason) -> groups."""
    for backend in AUTO_ORDER[ctx.device.type]:
        reason = unavailable_reason(backend, ctx.device)
        if reason is None:
            try:
                return backend, _executors(backend, group, ctx, allow_build=False)
            except (BackendUnavailableError, IncompatibleEngineError) as exc:
                reason = str(exc)
        rejected.setdefault((backend, reason), []).append(group)
    raise BackendUnavailableError(f"{group}: expected some backend to run, found none ({_describe(rejected)})")


def _describe(rejected: dict[tuple[str, str], list[str]]) -> str:
    return "; ".join(f"{backend} ({', '.join(groups)}): {reason}" for (backend, reason), groups in rejected.items())


def create_runners(models, backend: str = AUTO, *, device: torch.device | str | None = None,
                   options: BackendOptions = BackendOptions()) -> Runners:
    """Runners for `models` (an engine.weights.LoadedModels) on `backend` ('auto', one name, or per group)."""
    request = parse_backend_request(backend)
    ctx = BackendContext.of(models, torch.device(device) if device is not None else module_device(models.unet), options)
    executors: dict[str, dict[str, Executor]] = {}
    choice: dict[str, str] = {}
    rejected: dict[tuple[str, str], list[str]] = {}
    for group, wanted in request.items():
        if wanted == AUTO:
            choice[group], executors[group] = _auto(group, ctx, rejected)
        else:
            choice[group], executors[group] = wanted, _explicit(wanted, group, ctx)
    if AUTO in request.values():
        chosen = ", ".join(f"{g}={b}" for g, b in choice.items())
        (log.warning if rejected else log.info)(
            "backend auto: %s%s", chosen, f"; rejected {_describe(rejected)}" if rejected else "")
    return Runners(
        unet=UNetRunner(executors["unet"]["unet"], executors["unet"]["unet_shallow"]),
        vae=VaeRunner(executors["vae"]["vae_encoder"], executors["vae"]["vae_decoder"]),
        audio_encoder=AudioRunner(executors["audio"]["audio_encoder"]),
        choice=choice,
    )


def select_unet_runner(backend: str, models, placement=None, *, options: BackendOptions = BackendOptions()) -> UNetRunner:
    """The U-Net runner alone (`placement` is anything with a `.device`, e.g. engine.pipeline.device.Placement)."""
    device = getattr(placement, "device", None)
    request = parse_backend_request(backend)
    only_unet = ",".join(f"{g}={'torch' if g != 'unet' else request['unet']}" for g in NETWORK_GROUPS)
    return create_runners(models, only_unet, device=device, options=options).unet
