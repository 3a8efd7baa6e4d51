"""The measurements of benchmarks/gpu_check.py, one function per step; each appends rows through `emit` as it goes.

Every function takes a Budget and stops starting new cases when the next would not fit, recording the cases it
left out, so a step that runs out of time still leaves what it measured. Models are the official architectures
with random weights (benchmarks/random_models.py), built on the device: no download, no network.
"""

from __future__ import annotations

import atexit
import copy
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REFERENCE_TFLOP = {64: 17.63, 32: 4.05}  # the count per full forward of 16 frames, one batch element
PEAK_TFLOPS = 790.0  # dense bf16 matrix rate measured on an H200 SXM (8192^3 products, random data)
AUDIO_TOKENS = 50
TIMESTEP = 501
Emit = Callable[[dict[str, Any]], None]


@dataclass
class Budget:
    """Seconds a step may use; `fits(estimate)` before each case."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def fits(self, estimate_s: float) -> bool:
        return self.left() > estimate_s


@dataclass(frozen=True)
class Plan:
    """Sizes of a run: the real ones on a GPU, tiny ones for the CPU smoke test (`--quick`)."""

    device: str
    quick: bool
    latent_sizes: tuple[int, ...] = (64, 32)  # 512 and 256 px
    frames: int = 16
    batch: int = 2  # classifier-free guidance
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    warmup: int = 2
    iters: int = 10
    resolutions: tuple[int, ...] = (512, 256)
    vae_resolutions: tuple[int, ...] = (512, 256)
    vae_frames: int = 16

    @classmethod
    def for_run(cls, device: str, quick: bool) -> "Plan":
        plan = cls(device=device, quick=quick)
        if quick:  # fp32: CPU bf16 kernels are slow, and only the plumbing is under test
            return replace(plan, latent_sizes=(8,), frames=2, dtypes=("fp32",), warmup=0, iters=1,
                           resolutions=(256,), vae_resolutions=(64,), vae_frames=2)
        return plan


# ---------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> dict[str, float]:
    """First-call seconds, then per-call ms (CUDA events on a GPU) over `iters` calls after `warmup` more."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(iters, 1)):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"first_call_s": round(first, 3), "ms_median": round(statistics.median(times), 3),
            "ms_min": round(min(times), 3), "iters": len(times)}


def deviation(out: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """max |out - ref|, ||out - ref|| / ||ref|| and whether `out` is finite (overflow shows as inf/NaN)."""
    a, b = out.detach().double().cpu(), ref.detach().double().cpu()
    finite = bool(torch.isfinite(a).all())
    if not finite:
        return {"finite": False, "max_abs_dev": None, "rel_l2_dev": None}
    return {"finite": True, "max_abs_dev": float((a - b).abs().max()),
            "rel_l2_dev": float((a - b).norm() / b.norm().clamp_min(1e-30))}


class exact_fp32:
    """TF32 off while fp32 references are computed (cuDNN convolutions use TF32 by default on CUDA)."""

    def __enter__(self) -> None:
        self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved


def free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _random_models():  # benchmarks/ is on sys.path when the scripts run
    import random_models

    return random_models


# ---------------------------------------------------------------------------------------------- (2) U-Net
def unet_flops(latent: int, frames: int, batch: int, config: dict) -> dict[str, float]:
    """FLOPs of one full and one shallow pass, counted on the meta device (no memory, no kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    from engine.models import LatentSyncUNet

    with torch.device("meta"):
        model = LatentSyncUNet.from_config(config).eval()
        sample = torch.empty(batch, 13, frames, latent, latent)
        ehs = torch.empty(batch * frames, AUDIO_TOKENS, config["cross_attention_dim"])
        t = torch.full((batch,), float(TIMESTEP))
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            _, deep = model.forward_full(sample, t, ehs)
        full = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.forward_shallow(sample, t, ehs, deep)
        shallow = counter.get_total_flops()
    return {"full": float(full), "shallow": float(shallow)}


def _unet_inputs(latent: int, plan: Plan, cross_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(plan.batch, 13, plan.frames, latent, latent, generator=g),
        "timestep": torch.full((plan.batch,), float(TIMESTEP)),
        "encoder_hidden_states": torch.randn(plan.batch * plan.frames, AUDIO_TOKENS, cross_dim, generator=g),
    }


# cheap and certain first: eager, then exported runtimes, then compile (minutes per shape at full size)
UNET_MODE_ORDER = ("eager", "onnxruntime", "tensorrt", "compile")
FIRST_COMPILE_ESTIMATE_S = 180.0  # two graphs (full, shallow) with CUDA-graph recording, official size


def measure_unet(plan: Plan, budget: Budget, emit: Emit, *, build_trt: bool = False,
                 modes: tuple[str, ...] = UNET_MODE_ORDER) -> None:
    """Full and shallow passes per latent size x dtype x mode: ms/call, TFLOP/s, deviation from fp32 eager."""
    from engine.models import official_unet_config, tiny_unet_config

    config = tiny_unet_config() if plan.quick else official_unet_config()
    device = plan.device
    if plan.quick:
        from engine.weights import load_models

        reference_model = load_models("tiny-random", device=device).unet  # non-zero weights, tiny sizes
    else:
        reference_model = _random_models().official_random_unet(device=device, dtype=torch.float32)
    cross = config["cross_attention_dim"]
    refs: dict[tuple[int, str], torch.Tensor] = {}
    flops: dict[int, dict[str, float]] = {}
    for latent in plan.latent_sizes:  # fp32 references first: every later row compares to them
        flops[latent] = unet_flops(latent, plan.frames, plan.batch, config)
        feeds = {k: v.to(device) for k, v in _unet_inputs(latent, plan, cross).items()}
        with torch.inference_mode(), exact_fp32():
            noise, deep = reference_model.forward_full(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
            refs[(latent, "full")] = noise.cpu()
            refs[(latent, "deep")] = deep
            refs[(latent, "shallow")] = reference_model.forward_shallow(
                feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"], deep).cpu()
        emit({"kind": "flops", "latent": latent, "resolution": latent * 8, "frames": plan.frames, "batch": plan.batch,
              "tflop_full": round(flops[latent]["full"] / 1e12, 3),
              "tflop_shallow": round(flops[latent]["shallow"] / 1e12, 4),
              "reference_tflop_full_per_16_frames": REFERENCE_TFLOP.get(latent)})
    models = {dtype: copy.deepcopy(reference_model).to(DTYPES[dtype]) for dtype in plan.dtypes}
    del reference_model  # the fp32 outputs are all that is needed from it
    free(device)
    cases = [(mode, dtype, latent) for mode in sorted(modes, key=UNET_MODE_ORDER.index) for dtype in plan.dtypes
             for latent in plan.latent_sizes]
    runnable = []
    for mode, dtype, latent in cases:  # every known skip reason first: a later kill cannot lose them
        reason = unet_mode_unavailable(mode, plan, device, dtype, build_trt)
        if reason is None:
            runnable.append((mode, dtype, latent))
        else:
            emit({**_unet_base(mode, dtype, latent, plan), "skipped": reason})
    compile_estimate_s = FIRST_COMPILE_ESTIMATE_S  # until a compile case is measured
    for mode, dtype, latent in runnable:
        base = _unet_base(mode, dtype, latent, plan)
        estimate = {"eager": 5.0, "compile": compile_estimate_s, "onnxruntime": 120.0, "tensorrt": 900.0}[mode]
        if not budget.fits(estimate):
            emit({**base, "skipped": f"budget: {budget.left():.0f} s left, this case needs about {estimate:.0f} s"
                                     + (" (re-run with --only unet --budget-scale 6)" if mode == "compile" else "")})
            continue
        try:
            rows = _unet_case(mode, models[dtype], latent, plan, cross, refs, flops[latent])
        except Exception as exc:  # a failing mode is a result, not the end of the step
            emit({**base, "error": f"{type(exc).__name__}: {exc}"[:500]})
            free(device)
            continue
        for row in rows:
            emit({**base, **row})
        if mode == "compile":  # each case compiles two graphs and records their CUDA graphs: their sum
            compile_estimate_s = sum(r["first_call_s"] for r in rows) * 1.3
            torch._dynamo.reset()  # drop the compiled graphs and their CUDA-graph memory pools
        free(device)


def _unet_base(mode: str, dtype: str, latent: int, plan: Plan) -> dict[str, Any]:
    return {"kind": "unet", "mode": mode, "dtype": dtype, "latent": latent, "resolution": latent * 8,
            "frames": plan.frames, "batch": plan.batch}


def unet_mode_unavailable(mode: str, plan: Plan, device: str, dtype: str, build_trt: bool) -> str | None:
    from engine.backends.select import unavailable_reason

    if mode == "eager":
        return None
    if plan.quick:
        return "--quick: eager only"
    backend = {"compile": "compile", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[mode]
    reason = unavailable_reason(backend, device)
    if reason is None and mode == "onnxruntime" and dtype == "bf16":
        from engine.backends.ort_backend import ort_dtype_reason

        reason = ort_dtype_reason(torch.bfloat16)
    if reason is None and mode == "tensorrt" and not build_trt:
        reason = ("an official-size U-Net engine takes minutes to build: pass --build-trt and a larger --budget "
                  "(engines are built into a temporary folder for this random model)")
    return reason


def _unet_case(mode: str, model, latent: int, plan: Plan, cross: int, refs, flops: dict[str, float]) -> list[dict[str, Any]]:
    dtype = next(model.parameters()).dtype
    device = plan.device
    feeds = {k: (v.to(device, dtype) if k != "timestep" else v.to(device)) for k, v in _unet_inputs(latent, plan, cross).items()}
    deep_in = refs[(latent, "deep")].to(device, dtype)
    full, shallow = _unet_callables(mode, model, latent, plan)
    rows = []
    with torch.inference_mode():
        for name, fn, args in (("full", full, (feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])),
                               ("shallow", shallow, (feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"], deep_in))):
            out: list[torch.Tensor] = []

            def call() -> None:
                result = fn(*args)
                out[:] = [result[0] if isinstance(result, tuple) else result]

            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            timing = time_call(call, device, plan.warmup, plan.iters)
            tflop = flops[name] / 1e12
            achieved = tflop / (timing["ms_median"] / 1e3)
            row = {"pass": name, **timing, "tflop": round(tflop, 4), "tflops_achieved": round(achieved, 2),
                   "fraction_of_peak": round(achieved / PEAK_TFLOPS, 4), **deviation(out[0], refs[(latent, name)])}
            if device.startswith("cuda"):
                row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows.append(row)
    return rows


def _unet_callables(mode: str, model, latent: int, plan: Plan):  # noqa: ANN202
    """(full, shallow) callables with the U-Net's signatures for `mode`."""
    if mode == "eager":
        return model.forward_full, model.forward_shallow
    if mode == "compile":
        from engine.backends.config import EngineConfig

        compile_mode = EngineConfig().compile_mode_for(torch.device(plan.device).type)
        full = torch.compile(model.forward_full, mode=compile_mode, dynamic=False)
        shallow = torch.compile(model.forward_shallow, mode=compile_mode, dynamic=False)

        def step(fn):  # noqa: ANN001, ANN202 - CUDA-graph outputs are overwritten by the next replay
            def call(*args):  # noqa: ANN002, ANN202
                torch.compiler.cudagraph_mark_step_begin()
                result = fn(*args)
                return tuple(t.clone() for t in result) if isinstance(result, tuple) else result.clone()
            return call

        return step(full), step(shallow)
    full_exec, shallow_exec = _artifact_executors(mode, model, latent, plan)

    def full(sample, timestep, ehs):  # noqa: ANN001, ANN202
        out = full_exec({"sample": sample, "timestep": timestep.float(), "encoder_hidden_states": ehs})
        return out["noise_pred"], out["deep_feature"]

    def shallow(sample, timestep, ehs, deep):  # noqa: ANN001, ANN202
        return shallow_exec({"sample": sample, "timestep": timestep.float(), "encoder_hidden_states": ehs,
                             "deep_feature": deep})["noise_pred"]

    return full, shallow


_EXECUTORS: dict[tuple, tuple] = {}  # (mode, dtype, latent) -> executors; ONNX files shared across latent sizes
_FOLDERS: dict[torch.dtype, Path] = {}


def _artifact_executors(mode: str, model, latent: int, plan: Plan) -> tuple:  # noqa: ANN001
    """ONNX Runtime / TensorRT executors of both passes, exported once per dtype into a private temporary folder."""
    from engine.backends.config import EngineConfig
    from engine.backends.select import BackendContext, make_executor

    dtype = next(model.parameters()).dtype
    key = (mode, dtype, latent)
    if key not in _EXECUTORS:
        if dtype not in _FOLDERS:  # never registered: runs never see these files; removed when the step ends
            _FOLDERS[dtype] = Path(tempfile.mkdtemp(prefix="gpu-check-unet-"))
            atexit.register(shutil.rmtree, _FOLDERS[dtype], True)
        folder = _FOLDERS[dtype]
        ctx = BackendContext({"unet": model, "vae": None, "audio": None}, name="official-random",
                             resolution=latent * 8, device=torch.device(plan.device),
                             options=EngineConfig(artifact_dir=folder, frames=plan.frames, batch=plan.batch))
        _EXECUTORS[key] = (make_executor(mode, "unet", ctx, allow_build=True),
                           make_executor(mode, "unet_shallow", ctx, allow_build=True))
    return _EXECUTORS[key]


# ---------------------------------------------------------------------------------------------- (3) VAE
def measure_vae(plan: Plan, budget: Budget, emit: Emit) -> None:
    """Encode (posterior) and decode per frame at each resolution x dtype, with the layout/autotune options."""
    from engine.models.vae import build_vae, tiny_vae_config

    device = plan.device
    if plan.quick:
        torch.manual_seed(0)
        reference = build_vae(tiny_vae_config()).to(device).eval()
    else:
        reference = _random_models().official_random_vae(device=device)
    options = [("nchw", False, None)]
    if not plan.quick:  # the measured options, on the default GPU dtype
        options += [("channels_last", True, None), ("cudnn_benchmark", False, True)]
    for resolution in plan.vae_resolutions:
        res = resolution
        g = torch.Generator().manual_seed(1)
        pixels = (torch.rand(plan.vae_frames, 3, res, res, generator=g) * 2 - 1).to(device)
        latents = torch.randn(plan.vae_frames, 4, res // 8, res // 8, generator=g).to(device)
        with torch.inference_mode(), exact_fp32():
            ref_mean = reference.encode(pixels).latent_dist.mean.cpu()
            ref_images = reference.decode(latents).sample.cpu()
        for dtype in plan.dtypes:
            variants = options if dtype == plan.dtypes[0] else options[:1]
            for variant, channels_last, benchmark in variants:
                base = {"kind": "vae", "resolution": resolution, "dtype": dtype, "variant": variant,
                        "frames_per_call": plan.vae_frames}
                if not budget.fits(10.0):
                    emit({**base, "skipped": f"budget: {budget.left():.0f} s left"})
                    continue
                model = copy.deepcopy(reference).to(DTYPES[dtype])
                if channels_last:
                    torch.nn.Module.to(model, memory_format=torch.channels_last)
                previous = torch.backends.cudnn.benchmark
                if benchmark is not None:
                    torch.backends.cudnn.benchmark = benchmark
                try:
                    x, z = pixels.to(DTYPES[dtype]), latents.to(DTYPES[dtype])
                    with torch.inference_mode():
                        for op, fn, ref in (("encode", lambda: model.encode(x).latent_dist.mean, ref_mean),
                                            ("decode", lambda: model.decode(z).sample, ref_images)):
                            out: list[torch.Tensor] = []
                            timing = time_call(lambda: out.__setitem__(slice(None), [fn()]), device,
                                               plan.warmup, plan.iters)
                            emit({**base, "op": op, **timing,
                                  "ms_per_frame": round(timing["ms_median"] / plan.vae_frames, 3),
                                  **deviation(out[0], ref),
                                  "max_abs_output": float(out[0].float().abs().max()) if out[0].numel() else None})
                finally:
                    torch.backends.cudnn.benchmark = previous
                    del model
                    free(device)
        if not plan.quick and budget.fits(10.0):
            _vae_tf32_rows(reference, latents, ref_images, resolution, plan, emit)


def _vae_tf32_rows(model, latents: torch.Tensor, ref: torch.Tensor, resolution: int, plan: Plan, emit: Emit) -> None:
    """fp32 decode with TF32 off and on: the option only touches fp32 work (a `--dtype fp32` run)."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            out: list[torch.Tensor] = []
            with torch.inference_mode():
                timing = time_call(lambda: out.__setitem__(slice(None), [model.decode(latents).sample]), plan.device,
                                   plan.warmup, plan.iters)
            emit({"kind": "vae", "resolution": resolution, "dtype": "fp32", "variant": "tf32" if tf32 else "fp32",
                  "op": "decode", "frames_per_call": plan.vae_frames, **timing,
                  "ms_per_frame": round(timing["ms_median"] / plan.vae_frames, 3), **deviation(out[0], ref)})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


# ---------------------------------------------------------------------------------------------- (4) pipeline
DEMO_FILES = ("demo1_video.mp4", "demo1_audio.wav", "demo1_face_track.json")  # what --prepare puts in media/
QUICK_SPEECH_SAMPLES = 3200  # 0.2 s -> 5 output frames (7 at the official length): one short chunk


def demo_inputs(media: Path | None, seconds: float, quick: bool):  # noqa: ANN201
    """(video path or frames array, speech float32 16 kHz, landmarks [T,3,2]) for the pipeline and streaming steps."""
    if quick:  # synthetic: 8 frames of one small "face" image with fixed alignment points
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, (8, 320, 320, 3), dtype=np.uint8)
        landmarks = np.tile(np.array([[120, 140], [200, 140], [160, 200]], np.float32), (8, 1, 1))
        return frames, (0.1 * rng.standard_normal(QUICK_SPEECH_SAMPLES)).astype(np.float32), landmarks
    from engine.constants import SAMPLE_RATE
    from engine.media import load_audio

    media = Path(media)
    video, audio, track = (media / name for name in DEMO_FILES)
    missing = [p.name for p in (video, audio, track) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not in {media}: run `python benchmarks/gpu_check.py --prepare` "
                                "where ../shared/media exists")
    speech = load_audio(audio, sample_rate=SAMPLE_RATE)[: int(seconds * SAMPLE_RATE)]
    points = json.loads(track.read_text())["landmarks3"]
    landmarks = np.array([[[math.nan] * 2] * 3 if p is None else p for p in points], np.float32)
    return video, speech, landmarks


class GpuUtilisation:
    """Samples NVML's GPU utilisation (the share of time a kernel ran) while active.

    NVML averages utilisation over its own sample period (1/6 s to 1 s depending on the GPU), so polling faster
    than every 0.2 s re-reads the same average. An NVML error during sampling ends the sampling but is kept
    (`error`, with the sample count), so an idle fraction from partial samples is never shown without a note."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.samples, self.error = interval_s, [], None
        self._stop = threading.Event()
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(index), pynvml
        except Exception as exc:  # no NVML (CPU runs, containers without it)
            self.error = f"{type(exc).__name__}: {exc}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            except Exception as exc:  # noted, not silent: the fraction below covers only the samples before it
                self.error = f"sampling stopped after {len(self.samples)} samples: {type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "GpuUtilisation":
        if self._handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._handle is not None:
            self._thread.join()

    def idle_fraction(self) -> float | None:
        return round(1 - statistics.fmean(self.samples) / 100, 3) if self.samples else None

    def method(self) -> str:
        return f"NVML utilization.gpu, one sample per {self.interval_s * 1e3:.0f} ms ({len(self.samples)} samples)"


@dataclass(frozen=True)
class Variant:
    """One way to run the pipeline: a backend, device options and SDK keyword arguments (where the SDK has them)."""

    name: str
    backend: str
    device_options: dict[str, Any]
    sdk_kwargs: dict[str, Any]


def pipeline_variants(optimized_backend: str) -> list[Variant]:
    """eager-serial: the official-equivalent path (eager torch, default math, one chunk per U-Net call, at most
    one chunk prepared ahead, the device synchronised at every stage boundary as the official loop does).
    optimized: the engine's fast path (`optimized_backend`, cuDNN autotuning, channels_last VAE, the pipelined
    core with consecutive chunks of the job batched together)."""
    from engine.runtime import EnginePolicy

    return [
        Variant("eager-serial", "torch", {}, {"policy": EnginePolicy(max_batch=1, prefetch_chunks=1, profile=True)}),
        Variant("optimized", optimized_backend, {"cudnn_benchmark": True, "vae_channels_last": True},
                {"policy": EnginePolicy(max_batch=4, same_job_batching=True, prefetch_chunks=4)}),
    ]


def _make_sync(models, placement, variant: Variant):  # noqa: ANN001, ANN202
    """A LipSync for `variant`; SDK keywords this SDK does not take are dropped and reported."""
    import inspect

    from engine.backends.config import EngineConfig
    from engine.pipeline.device import DeviceOptions, apply_device_options
    from engine.pipeline.sdk import LipSync

    options = DeviceOptions(**variant.device_options)
    accepted = inspect.signature(LipSync.__init__).parameters
    kwargs = {k: v for k, v in variant.sdk_kwargs.items() if k in accepted}
    if "engine" in accepted:
        kwargs["engine"] = EngineConfig(device=options)
    applied = apply_device_options(models, placement.device, placement.dtype, options)
    dropped = sorted(set(variant.sdk_kwargs) - set(kwargs))
    return LipSync(models, placement, face="auto", backend=variant.backend, **kwargs), applied, dropped


def measure_pipeline(plan: Plan, budget: Budget, emit: Emit, *, media: Path | None, seconds: float,
                     optimized_backend: str = "torch") -> None:
    """The whole pipeline on the demo clip: reference and fast, per resolution, eager-serial vs optimized."""
    from engine.pipeline.device import choose_placement
    from engine.pipeline.faces import LandmarkArraySource

    video, speech, landmarks = demo_inputs(media, seconds, plan.quick)
    placement = choose_placement(plan.device, "auto" if not plan.quick else "fp32")
    presets = ("fast",) if plan.quick else ("reference", "fast")
    settings = {p: {"steps": 1, "guidance": 1.0} if plan.quick else {} for p in presets}
    with tempfile.TemporaryDirectory() as tmp:
        base_models = _pipeline_models(plan, placement, Path(tmp))
        out = None if plan.quick else Path(tmp) / "out.mp4"
        for variant in pipeline_variants(optimized_backend):
            for resolution in plan.resolutions:
                models = replace(base_models, resolution=resolution)
                base = {"kind": "pipeline", "variant": variant.name, "backend": variant.backend,
                        "resolution": resolution}
                if not budget.fits(25.0):
                    for preset in presets:
                        emit({**base, "preset": preset, "skipped": f"budget: {budget.left():.0f} s left"})
                    continue
                try:
                    sync_obj, applied, dropped = _make_sync(models, placement, variant)
                    if not plan.quick:  # cuDNN autotuning, allocator growth, lazy module loads: not in the timing
                        sync_obj(video, speech, out, face=LandmarkArraySource(landmarks), steps=1, guidance=1.0)
                except Exception as exc:
                    emit({**base, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                for preset in presets:
                    if not budget.fits(15.0):
                        emit({**base, "preset": preset, "skipped": f"budget: {budget.left():.0f} s left"})
                        continue
                    emit({**base, "preset": preset, "device_options": applied, "sdk_kwargs_not_supported": dropped,
                          "sdk_kwargs": {k: repr(v) for k, v in variant.sdk_kwargs.items()},
                          **_time_pipeline(sync_obj, video, speech, out, landmarks, preset, settings[preset],
                                           placement.device)})
                del sync_obj
                free(plan.device)


def _pipeline_models(plan: Plan, placement, tmp: Path):  # noqa: ANN001, ANN202
    """Official-size random networks on a GPU; the micro model (tiny VAE) for the CPU smoke test."""
    from engine.weights import load_models

    if plan.quick:
        folder = _random_models().write_micro_model(tmp / "micro", resolution=256)
        return load_models(str(folder), device=placement.device, dtype=placement.dtype)
    return _random_models().official_random_models(device=placement.device, dtype=placement.dtype, resolution=512)


def _time_pipeline(sync_obj, video, speech, out, landmarks, preset: str, overrides: dict, device) -> dict[str, Any]:  # noqa: ANN001
    from engine.pipeline.faces import LandmarkArraySource

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(str(device))
    with GpuUtilisation() as gpu:
        t0 = time.perf_counter()
        result = sync_obj(video, speech, out, preset=preset, face=LandmarkArraySource(landmarks), **overrides)
        sync(str(device))
        wall = time.perf_counter() - t0
    stages = dict(result.timings)
    total = sum(stages.values()) or 1.0
    return {
        "frames": result.num_frames, "wall_s": round(wall, 3), "frames_per_s": round(result.num_frames / wall, 3),
        "stage_s": {k: round(v, 4) for k, v in stages.items()},
        "stage_share": {k: round(v / total, 4) for k, v in stages.items()},
        "gpu_idle_fraction": gpu.idle_fraction(), "gpu_idle_method": gpu.method(),
        "gpu_idle_note": gpu.error,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "steps": result.config.steps, "guidance": result.config.guidance_scale,
        "deepcache": result.config.deepcache_interval,
    }


# ---------------------------------------------------------------------------------------------- (5) streaming
THROUGHPUT_RESERVE_S = 35.0  # benchmarks/throughput.py's share of the streaming step (it needs about 30 s)
LIVE_SESSION_ESTIMATE_S = 10.0  # 2 s of speech pushed in real time, then the drain


def measure_streaming(plan: Plan, budget: Budget, emit: Emit, *, media: Path | None, seconds: float) -> None:
    """First-frame latency and steady frame interval of a live session, then benchmarks/throughput.py's N streams
    (the live sessions leave THROUGHPUT_RESERVE_S of the budget to it)."""
    from engine.pipeline.device import choose_placement

    placement = choose_placement(plan.device, "auto" if not plan.quick else "fp32")
    reserve = 0.0 if plan.quick else THROUGHPUT_RESERVE_S
    try:
        video, speech, landmarks = demo_inputs(media, seconds, plan.quick)
        needed = min(len(landmarks), int(seconds * 25) + 2)
        frames = _decode(video, needed) if isinstance(video, Path) else video
        from engine.pipeline.sdk import LipSync

        with tempfile.TemporaryDirectory() as tmp:
            models = replace(_pipeline_models(plan, placement, Path(tmp)), resolution=plan.resolutions[-1])
            sync_obj = LipSync(models, placement, face="auto", backend="torch")
            for chunk in ((16,) if plan.quick else (16, 8)):
                if not budget.fits(LIVE_SESSION_ESTIMATE_S + reserve):
                    emit({"kind": "stream", "chunk_frames": chunk,
                          "skipped": f"budget: {budget.left():.0f} s left, {reserve:.0f} s kept for throughput.py"})
                    continue
                emit({"kind": "stream", "resolution": models.resolution, "chunk_frames": chunk,
                      **_live_session(sync_obj, frames, landmarks, speech, chunk, quick=plan.quick)})
            del sync_obj, models
        free(plan.device)
    except Exception as exc:
        emit({"kind": "stream", "error": f"{type(exc).__name__}: {exc}"[:500]})
    emit(_throughput(plan, budget))


def _decode(video: Path, count: int) -> np.ndarray:
    from engine.media import iter_video_frames

    frames = []
    for frame in iter_video_frames(video, fps=25):
        frames.append(frame.rgb)
        if len(frames) >= count:
            break
    return np.stack(frames)


def _live_session(sync_obj, frames: np.ndarray, landmarks: np.ndarray, speech: np.ndarray, chunk: int, *,
                  quick: bool) -> dict[str, Any]:  # noqa: ANN001
    from engine.pipeline.config import resolve_config
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    settings = resolve_config("fast", steps=1, guidance_scale=1.0) if quick else resolve_config("reference")
    config = StreamConfig(mode="live", chunk_frames=chunk, realtime=False, sync=settings, max_queued_seconds=600)
    walls: list[float] = []
    session = StreamSession(sync_obj, frames, config, on_frame=lambda f: walls.append(time.perf_counter()),
                            face=LandmarkArraySource(landmarks))
    piece = 640  # 40 ms of speech per push, on the wall clock
    t0 = time.perf_counter()
    for k, start in enumerate(range(0, speech.size, piece)):
        time.sleep(max(0.0, t0 + k * 0.04 - time.perf_counter()))
        session.push_audio(speech[start:start + piece])
    session.end_of_speech()
    session.close(drain=True, timeout=600)
    gaps = np.diff(walls) if len(walls) > 1 else np.array([])
    burst = gaps[chunk:] if gaps.size > chunk else gaps  # after the first chunk
    return {
        "frames": len(walls), "speech_s": round(speech.size / 16000, 2),
        "first_frame_latency_s": round(walls[0] - t0, 4) if walls else None,
        "steady_frame_interval_ms": round(float((walls[-1] - walls[chunk]) / (len(walls) - chunk - 1)) * 1e3, 2)
        if len(walls) > chunk + 1 else None,
        "max_gap_ms": round(float(burst.max()) * 1e3, 2) if burst.size else None,
        "realtime_interval_ms": 40.0,
    }


def _script_row(name: str, script: Path, command: list[str], budget: Budget, result: Path, *,
                minimum_s: float) -> dict[str, Any]:
    """Run a benchmark script with what is left of the budget (its whole process tree killed at the end);
    its JSON result, or the partial one it wrote so far."""
    from process_tree import run_killable

    shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script)
    row: dict[str, Any] = {"kind": name, "script": shown, "command": command}
    if not script.exists():
        return {**row, "skipped": f"{shown} is not in this checkout"}
    timeout = budget.left() - 3
    if timeout < minimum_s:
        return {**row, "skipped": f"budget: {budget.left():.0f} s left, it needs about {minimum_s:.0f} s"}
    with tempfile.TemporaryFile("w+") as output:
        returncode, timed_out = run_killable(command, timeout, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        output.seek(0)
        tail = output.read()[-1500:]
    data = None
    if result.exists():
        try:
            data = json.loads(result.read_text())
        except json.JSONDecodeError:  # cut by the kill
            data = None
    if timed_out:
        return {**row, "error": f"timed out after {timeout:.0f} s (process tree killed)", "partial": data}
    if returncode != 0 or data is None:
        return {**row, "returncode": returncode, "error": tail}
    return {**row, "returncode": returncode, "result": data}


def _throughput(plan: Plan, budget: Budget) -> dict[str, Any]:
    """benchmarks/throughput.py in a subprocess (the engine-core benchmark; its files stay in a temporary folder,
    its JSON goes into this row). It rewrites its JSON after every measured row, so a timeout keeps `partial`."""
    script = REPO / "benchmarks" / "throughput.py"
    with tempfile.TemporaryDirectory(prefix="gpu-check-throughput-") as tmp:
        out = Path(tmp) / "throughput.json"
        command = [sys.executable, str(script), "--device", plan.device, "--out", str(out)]
        if plan.quick:
            command += ["--quick", "--streams", "1", "2", "--frames", "4"]
        return _script_row("throughput", script, command, budget, out, minimum_s=10.0 if plan.quick else 30.0)


SYSTEM_SCRIPT = REPO / "benchmarks" / "system.py"


def measure_system(plan: Plan, budget: Budget, emit: Emit) -> None:
    """benchmarks/system.py (the whole-system benchmark) with `--quick --device cuda` on a GPU; with --quick on a
    CPU its seconds-long `--smoke` check on the modelled device (the plumbing: not a measurement)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-system-") as tmp:
        mode = ["--smoke", "--device", "modelled"] if plan.quick else ["--quick", "--device", "cuda"]
        command = [sys.executable, str(SYSTEM_SCRIPT), *mode, "--out", tmp]
        emit(_script_row("system", SYSTEM_SCRIPT, command, budget, Path(tmp) / "system.json", minimum_s=10.0))
