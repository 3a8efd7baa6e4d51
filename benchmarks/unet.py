"""U-Net throughput (frames/s, TFLOP/s) of the official network, eager vs torch.compile, written as JSON.

LatentSync 1.5 (256 px) and 1.6 (512 px) share one network; only the latent size differs (32x32 vs 64x64).
Weights are random (throughput does not depend on their values).

    python benchmarks/unet.py                                  # CPU: 1 x 4 frames at 32x32, fp32, eager + compile
    python benchmarks/unet.py --device cuda                    # GPU: 2 x 16 frames at 32x32 and 64x64, fp16 + bf16
    python benchmarks/unet.py --sizes 32 --frames 16 --modes eager --dtypes fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESOLUTION_OF_LATENT = {32: "256 (LatentSync 1.5)", 64: "512 (LatentSync 1.6)"}
AUDIO_TOKENS = 50
TIMESTEP = 501
DEFAULTS = {  # device -> (batch, frames, latent sizes, dtypes)
    "cpu": (1, 4, [32], ["fp32"]),
    "cuda": (2, 16, [32, 64], ["fp16", "bf16"]),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_calls(fn, device: str, warmup: int, iters: int) -> tuple[float, list[float]]:  # noqa: ANN001
    """(seconds of the first call, seconds of each timed call) after `warmup` calls."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, times


def bench_case(model, *, device: str, dtype: torch.dtype, batch: int, frames: int, size: int, mode: str,
               warmup: int, iters: int, shallow: bool, compile_mode: str, flops: dict | None = None) -> dict:  # noqa: ANN001
    from engine.models import LatentSyncUNet

    assert isinstance(model, LatentSyncUNet)
    sample = torch.randn(batch, 13, frames, size, size, device=device, dtype=dtype)
    audio = torch.randn(batch * frames, AUDIO_TOKENS, model.cfg.cross_attention_dim, device=device, dtype=dtype)
    timestep = torch.tensor(TIMESTEP, device=device)
    full = model.forward_full
    part = model.forward_shallow
    if mode == "compile":
        full = torch.compile(full, mode=compile_mode, dynamic=False)
        part = torch.compile(part, mode=compile_mode, dynamic=False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        first, times = _time_calls(lambda: full(sample, timestep, audio), device, warmup, iters)
        row = {
            "latent": f"{size}x{size}", "resolution": RESOLUTION_OF_LATENT.get(size, f"{size * 8} px"),
            "batch": batch, "frames": frames, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
            "first_call_s": round(first, 3), "latency_s_median": round(statistics.median(times), 4),
            "latency_s_min": round(min(times), 4), "iters": iters,
            "frames_per_s": round(batch * frames / statistics.median(times), 3),
        }
        if flops:
            row["tflop_per_call"] = round(flops["full"] / 1e12, 3)
            row["tflops_achieved"] = round(flops["full"] / 1e12 / statistics.median(times), 3)
        if shallow:
            deep = full(sample, timestep, audio)[1]
            s_first, s_times = _time_calls(lambda: part(sample, timestep, audio, deep), device, warmup, iters)
            row["shallow_first_call_s"] = round(s_first, 3)
            row["shallow_latency_s_median"] = round(statistics.median(s_times), 4)
            row["shallow_frames_per_s"] = round(batch * frames / statistics.median(s_times), 3)
            row["shallow_speedup"] = round(statistics.median(times) / statistics.median(s_times), 2)
            if flops:
                row["shallow_tflops_achieved"] = round(flops["shallow"] / 1e12 / statistics.median(s_times), 3)
    if device == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="default: fp32 on CPU, fp16 bf16 on CUDA")
    parser.add_argument("--batch", type=int, help="default: 1 on CPU, 2 (CFG) on CUDA")
    parser.add_argument("--frames", type=int, help="default: 4 on CPU, 16 on CUDA")
    parser.add_argument("--sizes", type=int, nargs="+", help="latent sizes; default 32 on CPU, 32 64 on CUDA")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls (the first is reported separately)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--no-shallow", action="store_true", help="skip timing the DeepCache shallow step")
    parser.add_argument("--config", choices=["official", "tiny"], default="official")
    parser.add_argument("--out", type=Path, default=RESULTS / "unet.json")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    args = parser.parse_args()

    from engine.models import LatentSyncUNet, official_unet_config, tiny_unet_config
    from gpu_measure import unet_flops
    from random_models import official_random_unet

    batch, frames, sizes, dtypes = DEFAULTS[args.device]
    batch, frames = args.batch or batch, args.frames or frames
    sizes, dtypes = args.sizes or sizes, args.dtypes or dtypes
    torch.set_flush_denormal(True)

    cfg = official_unet_config() if args.config == "official" else tiny_unet_config()
    t0 = time.perf_counter()
    if args.config == "official":  # every layer non-zero: zero conv_in/conv_out would time all-zero tensors
        model = official_random_unet(device=args.device)
    else:
        model = LatentSyncUNet.from_config(cfg).eval().to(args.device)
    build_s = time.perf_counter() - t0
    result = {
        "benchmark": "unet", "config": args.config,
        "note": "LatentSync 1.5 and 1.6 have the same U-Net; 256 px uses 32x32 latents, 512 px 64x64. "
                "Random weights. " + args.note,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "os_cpus": os.cpu_count(), "torch": torch.__version__,
        "load_avg_1m_start": round(os.getloadavg()[0], 2), "build_s": round(build_s, 2), "timestep": TIMESTEP, "rows": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    flops: dict[int, dict] = {}  # counted once per latent size (meta device)
    for dtype_name in dtypes:
        model.to(DTYPES[dtype_name])
        for mode in args.modes:
            for size in sizes:
                torch._dynamo.reset()
                if size not in flops:
                    flops[size] = unet_flops(size, frames, batch, cfg)
                row = bench_case(model, device=args.device, dtype=DTYPES[dtype_name], batch=batch, frames=frames,
                                 size=size, mode=mode, warmup=args.warmup, iters=args.iters,
                                 shallow=not args.no_shallow, compile_mode=args.compile_mode,
                                 flops=flops[size])
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                args.out.write_text(json.dumps(result, indent=1))  # after every row: partial runs keep their data
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
