"""Backend selection in one function: parse the request, reject what cannot run (saying why), build runners.

`auto` is eager torch unless the user opted into built artifacts (a folder that `engine export`/`engine build`
registered for the model, or one given as `--artifacts` / EngineConfig.artifact_dir); then it walks a fixed
preference order per device over those artifacts. It never exports or builds, so the choice cannot change
because some other command left files in the cache, never takes a backend that needs more than
AUTO_MAX_MEMORY_FACTOR times eager torch's memory (measured), and it logs one line naming the choice per network group
(a warning, with each rejected candidate's reason, when an opted-in artifact could not be used). An explicit
backend never falls back: it raises BackendUnavailableError (R18), or IncompatibleEngineError when its
artifacts are stale and building is not allowed (R15).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.backends.base import AudioRunner, Executor, Runners, UNetRunner, VaeRunner
from engine.backends.config import (  # noqa: F401 - BackendOptions re-exported for older imports
    BackendOptions,
    EngineConfig,
    default_artifact_dir,
    resolve_engine_config,
)
from engine.errors import BackendUnavailableError, IncompatibleEngineError, InvalidInputError, expect
from export.specs import NETWORK_GROUPS, BuildShape, Geometry
from export.wrappers import geometry_of, graph_dtype, module_device, module_dtype

log = logging.getLogger(__name__)

BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")
# Backends that only run when named: never chosen by `auto`, never listed as a real runtime. `modelled` stands in
# for a GPU with a cost model (engine.modelled): its results are modelled, never measured.
MODELLED = "modelled"
EXPLICIT_ONLY = (MODELLED,)
ARTIFACT_BACKENDS = ("onnxruntime", "tensorrt")  # run from exported / built files
AUTO = "auto"
GROUP_ALIASES = {"audio_encoder": "audio", "whisper": "audio", "unet_shallow": "unet"}
GROUP_OF = {network: group for group, networks in NETWORK_GROUPS.items() for network in networks}
# auto's preference over opted-in artifacts, eager torch last. NOT measured on CUDA yet (no GPU has run this
# engine; benchmarks/gpu_check.py measures it): the CUDA order is TensorRT's and ONNX Runtime's usual standing.
# On the CPU, benchmarks/backends.py measured ONNX Runtime 1.6-10x faster than eager torch per network on the tiny
# model (benchmarks/results/backends_tiny_cpu.json). torch.compile is never chosen by auto: its first call per
# shape compiles for minutes.
AUTO_ORDER = {
    "cuda": ("tensorrt", "onnxruntime", "torch"),
    "cpu": ("onnxruntime", "torch"),
}
# auto's memory rule: never a backend whose peak resident memory on a job exceeds this many times that of eager
# torch, the fallback. Factors are measured (benchmarks/backend_memory.py, results/backend_memory.json: a 3 s
# tiny-random job on the CPU, peak RSS of `engine run` per backend); a backend without a measured factor is allowed.
AUTO_MAX_MEMORY_FACTOR = 2.0
MEASURED_MEMORY_FACTORS = {  # (backend, device type, ONNX Runtime CPU arena on) -> peak RSS / eager torch's
    ("onnxruntime", "cpu", False): 1.11,
    ("onnxruntime", "cpu", True): 5.33,  # ORT's default session options: the arena this engine turns off
}


def memory_factor(backend: str, device: torch.device, config: EngineConfig) -> float | None:
    """Measured peak resident memory of `backend` on `device` over eager torch's on the same job, or None."""
    return MEASURED_MEMORY_FACTORS.get((backend, device.type, bool(config.ort_cpu_mem_arena)))


def memory_reason(backend: str, device: torch.device, config: EngineConfig) -> str | None:
    """Why auto must not pick `backend` for its memory (AUTO_MAX_MEMORY_FACTOR), or None when it may."""
    factor = memory_factor(backend, device, config)
    if factor is None or factor <= AUTO_MAX_MEMORY_FACTOR:
        return None
    return (f"needs {factor:g}x the resident memory of eager torch on {device.type} with these options (measured: "
            f"benchmarks/results/backend_memory.json); auto allows at most {AUTO_MAX_MEMORY_FACTOR:g}x")


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why `backend` cannot run on `device` on this machine, or None when it can."""
    device = torch.device(device)
    expect(backend in (*BACKENDS, *EXPLICIT_ONLY), InvalidInputError, "backend", (*BACKENDS, *EXPLICIT_ONLY), backend)
    if backend == MODELLED:
        return None if device.type == "cpu" else f"the modelled device runs on the host (cpu), not {device}"
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
    allowed = (*BACKENDS, *EXPLICIT_ONLY, AUTO)
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


class BackendContext:
    """What building executors needs: modules per group, device, geometry, configuration and artifact folder."""

    def __init__(self, modules: dict[str, Any], *, name: str, resolution: int, device: torch.device,
                 options: EngineConfig, files: Any = None):
        self.modules, self.device, self.options, self.resolution = modules, torch.device(device), options, resolution
        self.name = name
        self.geometry: Geometry = geometry_of(unet=modules.get("unet"), vae=modules.get("vae"),
                                              audio_encoder=modules.get("audio"))
        self.artifact_dir = Path(options.artifact_dir or default_artifact_dir(name))
        self.files = files  # engine.weights.ModelFiles the modules were loaded from, when known
        self._keys: dict[str, str] = {}

    def weights_key(self, group: str) -> str:
        """What keys a group's exported files and engines to its weights, computed once per group.

        Loaded checkpoints: their files' digests (read once per file, then cached by size and mtime);
        modules built in memory: a digest of every tensor (copied to the host).
        """
        if group not in self._keys:
            from export.artifacts import files_key, weights_sha256

            sources = _group_files(self.files, group)
            self._keys[group] = (files_key(sources[0], extra=sources[1]) if sources
                                 else weights_sha256(self.modules[group]))
        return self._keys[group]

    @classmethod
    def of(cls, models, device: torch.device, options: EngineConfig) -> "BackendContext":
        modules = {"unet": models.unet, "vae": models.vae, "audio": models.audio_encoder}
        return cls(modules, name=models.name, resolution=models.resolution, device=device, options=options,
                   files=getattr(models, "files", None))

    def build_shape(self) -> BuildShape:
        return BuildShape(batch=self.options.batch, frames=self.options.frames, latent_size=self.resolution // 8,
                          audio_batch=self.options.audio_batch)

    def build_settings(self, network: str):  # noqa: ANN201 - export.trt_builder.BuildSettings
        """Builder options for `network`: strongly typed engines take the graph's dtype as their precision."""
        from export.onnx_export import dtype_name
        from export.trt_builder import BuildSettings

        o = self.options
        precision = dtype_name(graph_dtype(network, self.modules[GROUP_OF[network]])) if o.typing == "strong" else o.precision
        return BuildSettings(precision=precision, optimization_level=o.opt_level, workspace_gib=o.workspace_gib,
                             typing=o.typing, fp32_norms=o.fp32_norms)


def _group_files(files: Any, group: str) -> tuple[list[Path], dict[str, Any]] | None:
    """(checkpoint files, extra fields) a group was loaded from, or None when unknown."""
    if files is None:
        return None
    if group == "unet":
        return [Path(files.unet_path)], {"unet_config": files.unet_config}
    if group == "audio":
        return [Path(files.whisper_path)], {}
    from engine.weights.loader import VAE_LEGACY_WEIGHTS_FILE
    from engine.weights.registry import VAE_CONFIG_FILE, VAE_WEIGHTS_FILE

    vae_dir = Path(files.vae_dir)
    weights = vae_dir / VAE_WEIGHTS_FILE
    if not weights.exists():
        weights = vae_dir / VAE_LEGACY_WEIGHTS_FILE
    return [vae_dir / VAE_CONFIG_FILE, weights], {}


def _onnx_path(ctx: BackendContext, network: str, module, allow_build: bool) -> Path:
    from export.onnx_export import current_onnx

    return current_onnx(network, module, ctx.artifact_dir, allow_export=allow_build,
                        weights_hash=ctx.weights_key(GROUP_OF[network]))


def make_executor(backend: str, network: str, ctx: BackendContext, *, allow_build: bool) -> Executor:
    """One executor of `network` on `backend` (exports / builds artifacts only when `allow_build`)."""
    module = ctx.modules[GROUP_OF[network]]
    if backend == MODELLED:
        from engine.modelled.executor import ModelledExecutor, ModelledOptions, device_for

        return ModelledExecutor(network, module, device_for(ctx.options.modelled or ModelledOptions()))
    if backend == "torch":
        from engine.backends.torch_backend import TorchExecutor

        return TorchExecutor(network, module)
    if backend == "compile":
        from engine.backends.torch_backend import CompileExecutor

        return CompileExecutor(network, module, mode=ctx.options.compile_mode_for(ctx.device.type))
    if backend == "onnxruntime":
        from engine.backends.ort_backend import OrtExecutor, ort_dtype_reason

        reason = ort_dtype_reason(graph_dtype(network, module))
        if reason is not None:  # before exporting anything
            raise BackendUnavailableError(f"{network} on onnxruntime: expected an fp32 or fp16 graph, found {reason}")
        onnx_path = _onnx_path(ctx, network, module, allow_build)
        o = ctx.options
        return OrtExecutor(network, onnx_path, ctx.geometry, ctx.device, providers=o.ort_providers,
                           cpu_mem_arena=o.ort_cpu_mem_arena, cuda_arena_strategy=o.ort_cuda_arena_strategy)
    from engine.backends.trt_backend import TrtExecutor
    from export.engines import ensure_engine
    from export.trt_env import detect_environment

    env = detect_environment(ctx.device.index)  # BackendUnavailableError before any export
    onnx_path = _onnx_path(ctx, network, module, allow_build)
    engine = ensure_engine(network, onnx_path, ctx.artifact_dir, geometry=ctx.geometry, shape=ctx.build_shape(),
                           settings=ctx.build_settings(network), env=env, no_build=not allow_build)
    return TrtExecutor(network, engine, ctx.geometry, ctx.device, cuda_graphs=ctx.options.trt_cuda_graphs)


def _executors(backend: str, group: str, ctx: BackendContext, allow_build: bool) -> dict[str, Executor]:
    return {n: make_executor(backend, n, ctx, allow_build=allow_build) for n in NETWORK_GROUPS[group]}


def _explicit(backend: str, group: str, ctx: BackendContext) -> dict[str, Executor]:
    reason = unavailable_reason(backend, ctx.device)
    if reason is not None:
        raise BackendUnavailableError(f"{group} backend {backend}: expected it to run on {ctx.device}, found {reason}")
    return _executors(backend, group, ctx, ctx.options.allow_build)


def _auto(group: str, ctx: BackendContext, rejected: dict[tuple[str, str], list[str]]) -> tuple[str, dict[str, Executor]]:
    """First backend of AUTO_ORDER that runs with existing, opted-in artifacts; records (backend, reason) -> groups."""
    for backend in AUTO_ORDER[ctx.device.type]:
        if backend in ARTIFACT_BACKENDS and not ctx.options.artifacts_opted_in:
            continue  # files nobody registered (a benchmark's, an explicit run's) never change auto's choice
        reason = unavailable_reason(backend, ctx.device) or memory_reason(backend, ctx.device, ctx.options)
        if reason is None:
            try:
                return backend, _executors(backend, group, ctx, allow_build=False)
            except (BackendUnavailableError, IncompatibleEngineError) as exc:
                reason = str(exc)
        rejected.setdefault((backend, reason), []).append(group)
    raise BackendUnavailableError(f"{group}: expected some backend to run, found none ({_describe(rejected)})")


def _describe(rejected: dict[tuple[str, str], list[str]]) -> str:
    return "; ".join(f"{backend} ({', '.join(groups)}): {reason}" for (backend, reason), groups in rejected.items())


def describe_choice(choice: dict[str, str]) -> str:
    """'unet=tensorrt vae=torch audio=torch': the backends of a run, for its one-line summary."""
    return " ".join(f"{group}={backend}" for group, backend in choice.items())


def create_runners(models, backend: str = AUTO, *, device: torch.device | str | None = None,
                   engine: EngineConfig | None = None, options: EngineConfig | None = None) -> Runners:
    """Runners for `models` (an engine.weights.LoadedModels) on `backend` ('auto', one name, or per group).

    `engine` is the run's configuration (None: the defaults); its artifact folder and TensorRT profile come
    from what `engine export`/`engine build` registered for the model unless it names a folder. The device
    options (TF32, cudnn.benchmark, VAE channels_last, whisper dtype) are applied here and recorded with the
    choice in `Runners.settings`. `options` is the old name of `engine`.
    """
    request = parse_backend_request(backend)
    config = resolve_engine_config(models.name, engine or options)
    device = torch.device(device) if device is not None else module_device(models.unet)
    settings = _apply_device_options(models, device, config)
    ctx = BackendContext.of(models, device, config)
    executors: dict[str, dict[str, Executor]] = {}
    choice: dict[str, str] = {}
    rejected: dict[tuple[str, str], list[str]] = {}
    for group, wanted in request.items():
        if wanted == AUTO:
            choice[group], executors[group] = _auto(group, ctx, rejected)
        else:
            choice[group], executors[group] = wanted, _explicit(wanted, group, ctx)
    if AUTO in request.values():
        why = "" if config.artifacts_opted_in else (
            f" (no built artifacts registered for {models.name}: `engine export` / `engine build` register them,"
            " or pass --artifacts DIR)")
        (log.warning if rejected else log.info)(
            "backend auto: %s%s%s", describe_choice(choice), why, f"; rejected {_describe(rejected)}" if rejected else "")
    settings.update(backends=dict(choice), artifact_dir=str(config.artifact_dir) if config.artifact_dir else None,
                    artifacts_opted_in=config.artifacts_opted_in)
    if MODELLED in choice.values():  # a modelled run says so in every report built from its settings
        from engine.modelled.executor import ModelledOptions

        settings.update(modelled=True, modelled_device=dataclasses.asdict(config.modelled or ModelledOptions()))
    return Runners(
        unet=UNetRunner(executors["unet"]["unet"], executors["unet"]["unet_shallow"]),
        vae=VaeRunner(executors["vae"]["vae_encoder"], executors["vae"]["vae_decoder"]),
        audio_encoder=AudioRunner(executors["audio"]["audio_encoder"]),
        choice=choice,
        settings=settings,
    )


def _apply_device_options(models, device: torch.device, config: EngineConfig) -> dict[str, Any]:
    from engine.pipeline.device import apply_device_options

    return apply_device_options(models, device, module_dtype(models.unet), config.device)


def select_unet_runner(backend: str, models, placement=None, *, engine: EngineConfig | None = None,
                       options: EngineConfig | None = None) -> UNetRunner:
    """The U-Net runner alone (`placement` is anything with a `.device`, e.g. engine.pipeline.device.Placement)."""
    device = getattr(placement, "device", None)
    request = parse_backend_request(backend)
    only_unet = ",".join(f"{g}={'torch' if g != 'unet' else request['unet']}" for g in NETWORK_GROUPS)
    return create_runners(models, only_unet, device=device, engine=engine or options).unet
