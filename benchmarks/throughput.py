"""Throughput of the engine core: N concurrent jobs or streams against the same N run one after another.

For each N (default 1, 2, 4, 8) and each mode:
- `jobs`: N offline SDK jobs (`LipSync.submit`) at once: decode, face alignment, the device stages
  batched across jobs by the engine core, restore;
- `streams`: N session-like callers, each in its own thread submitting one chunk at a time through
  `core.submit_chunk` and waiting for it (what a streaming session does), so per-chunk latency counts.
Against: the same N jobs/streams one after another (each stream runs alone once; the first N of
those runs are the sequential baseline for N). Reported: aggregate frames/s of both, per-stream
latency p50/p95 (jobs: submit to result; streams: per chunk), whether every stream's frames equal its
solo run within the batching tolerance (max |diff| <= 1 uint8 and >= 99.9 % equal), batch sizes seen,
and the device's idle fraction (CUDA events on a GPU, wall time of the device thread on a CPU).

Inputs are synthetic and self-contained (no media files needed): textured frames with fixed
landmarks per stream and seeded speech-like audio, so the script runs the same anywhere.

    python benchmarks/throughput.py --quick --out benchmarks/results/throughput_cpu_quick.json  # 2-core CPU
    python benchmarks/throughput.py --device cuda --out throughput_cuda.json  # official-size random networks
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench_utils import RESULTS, machine_info, publish, pyplot, save_figure

FRAME_SIZE = 320  # synthetic source frames (square)
LANDMARKS = np.array([[112.0, 120.0], [208.0, 120.0], [160.0, 178.0]], np.float32)  # brows and nose, 320 px
TOLERANCE = (1, 0.999)  # batching tolerance: max |diff| in uint8 steps, fraction of equal values


def synthetic_stream(k: int, frames: int, seconds: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 [T,H,W,3], landmarks [T,3,2], speech float32) for stream `k`, all seeded by k."""
    rng = np.random.default_rng(1000 + k)
    y, x = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32)
    base = np.stack([np.sin(x / (9 + k)) , np.cos(y / (11 + k)), np.sin((x + y) / 17)], axis=-1)
    video = []
    for t in range(frames):
        noise = rng.normal(0, 0.05, base.shape).astype(np.float32)
        video.append(((np.roll(base, t, axis=1) + noise) * 60 + 128).clip(0, 255).astype(np.uint8))
    jitter = rng.normal(0, 1.0, (frames, 3, 2)).astype(np.float32)
    n = int(seconds * 16000)
    t = np.arange(n, dtype=np.float32) / 16000
    speech = (0.3 * np.sin(2 * np.pi * (140 + 20 * k) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
              + 0.02 * rng.normal(0, 1, n)).astype(np.float32)
    return np.stack(video), LANDMARKS[None] + jitter, speech


def load(model: str, resolution: int, device: str, dtype: str, backend: str, policy):
    from engine.pipeline.device import choose_placement
    from engine.pipeline.sdk import LipSync

    if model == "official-random":
        from random_models import official_random_models

        placement = choose_placement(device, dtype)
        models = official_random_models(device=placement.device, dtype=placement.dtype, resolution=resolution)
        return LipSync(models, placement, backend=backend, policy=policy)
    return LipSync.from_pretrained(model, device=device, dtype=dtype, backend=backend, resolution=resolution,
                                   policy=policy)


def run_job(sync, stream, config) -> tuple[np.ndarray, float]:
    """A whole job alone: (frames, seconds)."""
    from engine.pipeline.faces import LandmarkArraySource

    frames, landmarks, speech = stream
    t0 = time.perf_counter()
    result = sync.submit(frames, speech, config=config, face=LandmarkArraySource(landmarks)).result()
    return result.frames, time.perf_counter() - t0


def run_jobs_together(sync, streams, config) -> tuple[list[np.ndarray], list[float]]:
    from engine.pipeline.faces import LandmarkArraySource

    t0 = time.perf_counter()
    handles = [sync.submit(f, s, config=config, face=LandmarkArraySource(lm)) for f, lm, s in streams]
    out, latency = [], []
    for h in handles:
        out.append(h.result().frames)
        latency.append(time.perf_counter() - t0)
    return out, latency


def run_stream(sync, stream, config) -> tuple[np.ndarray, list[float]]:
    """A session-like caller: one chunk at a time through `core.submit_chunk`; (frames, per-chunk latencies)."""
    from engine.pipeline.core import StageTimer
    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.source import SourceCursor

    frames, landmarks, speech = stream
    core = sync.core
    plan = core.plan_audio(speech, length="audio")
    aligner = core.new_aligner()
    cursor = SourceCursor(frames, LandmarkArraySource(landmarks), aligner)
    generator, noise = core.start_noise(config.seed)
    out, latency = [], []
    for start, stop, emit in plan.chunks(config.chunk_frames):
        items = cursor.take(stop - start)
        t0 = time.perf_counter()
        chunk = core.submit_chunk(items, range(start, stop), plan.windows(start, stop), config, noise, generator,
                                  aligner, StageTimer(), emit=emit)
        out += chunk.result()
        latency.append(time.perf_counter() - t0)
    return np.stack([f.rgb for f in out]), latency


def run_streams_together(sync, streams, config) -> tuple[list[np.ndarray], list[float]]:
    results = [None] * len(streams)

    def go(k):
        results[k] = run_stream(sync, streams[k], config)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r[0] for r in results], [x for r in results for x in r[1]]


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4) if values else None


def compare(got: list[np.ndarray], solo: list[np.ndarray]) -> tuple[bool, int, float]:
    worst, equal_min = 0, 1.0
    for a, b in zip(got, solo):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        worst, equal_min = max(worst, int(diff.max())), min(equal_min, float((diff == 0).mean()))
    return worst <= TOLERANCE[0] and equal_min >= TOLERANCE[1], worst, equal_min


def solo_runs(sync, mode: str, streams: list, config) -> list[dict]:
    """Each stream alone, one after another: its frames, its latencies and its wall time."""
    runs = []
    for stream in streams:
        t0 = time.perf_counter()
        if mode == "jobs":
            frames, seconds = run_job(sync, stream, config)
            latency = [seconds]
        else:
            frames, latency = run_stream(sync, stream, config)
        runs.append({"frames": frames, "latency": latency, "seconds": time.perf_counter() - t0})
    return runs


def measure(sync, mode: str, streams: list, solo: list[dict], config) -> dict:
    """All N streams at once through the engine, against the same N run one after another (`solo`)."""
    n = len(streams)
    t_seq = sum(r["seconds"] for r in solo)
    solo_latency = [x for r in solo for x in r["latency"]]
    before = sync.core.engine.stats()
    t0 = time.perf_counter()
    together, latency = (run_jobs_together if mode == "jobs" else run_streams_together)(sync, streams, config)
    wall = time.perf_counter() - t0
    after = sync.core.engine.stats()
    total = sum(len(f) for f in together)
    identical, worst, equal = compare(together, [r["frames"] for r in solo])
    busy = after["busy_s"] - before["busy_s"]
    sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    idle = round(max(0.0, 1 - busy / wall), 4)
    return {
        "mode": mode, "streams": n, "frames_per_stream": len(together[0]), "total_frames": total,
        "aggregate_frames_per_s": round(total / wall, 3), "sequential_frames_per_s": round(total / t_seq, 3),
        "speedup": round(t_seq / wall, 3), "wall_s": round(wall, 3), "sequential_wall_s": round(t_seq, 3),
        "latency_s": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
        "sequential_latency_s": {"p50": percentile(solo_latency, 50), "p95": percentile(solo_latency, 95)},
        "latency_unit": "job (submit to result)" if mode == "jobs" else "chunk (submit to finished frames)",
        "identical_to_solo": identical, "max_abs_diff_uint8": worst, "min_equal_fraction": round(equal, 6),
        "batch_sizes": {k: v for k, v in sizes.items() if v}, "device_idle_fraction": idle,
        "gpu_idle_fraction": idle if sync.core.device.type == "cuda" else None,
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({(r["mode"], r["resolution"]) for r in rows}):
        sel = [r for r in rows if (r["mode"], r["resolution"]) == key]
        xs = [r["streams"] for r in sel]
        ax.plot(xs, [r["aggregate_frames_per_s"] for r in sel], "o-", label=f"{key[0]} {key[1]}px concurrent")
        ax.plot(xs, [r["sequential_frames_per_s"] for r in sel], "x--", label=f"{key[0]} {key[1]}px one by one")
    ax.set_xlabel("concurrent jobs / streams")
    ax.set_ylabel("frames/s (all streams)")
    ax.set_title("engine core throughput")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def table(rows: list[dict]) -> str:
    lines = ["| mode | px | N | concurrent fps | one-by-one fps | ratio | latency p50 / p95 s | one-by-one p50 / p95 s "
             "| batches (size: count) | max diff | device idle |", "|" + "---|" * 11]
    for r in rows:
        sizes = ", ".join(f"{k}: {v}" for k, v in sorted(r["batch_sizes"].items(), key=lambda kv: int(kv[0])))
        lines.append(
            f"| {r['mode']} | {r['resolution']} | {r['streams']} | {r['aggregate_frames_per_s']:.2f} | "
            f"{r['sequential_frames_per_s']:.2f} | {r['speedup']:.2f} | {r['latency_s']['p50']} / "
            f"{r['latency_s']['p95']} | {r['sequential_latency_s']['p50']} / {r['sequential_latency_s']['p95']} | "
            f"{sizes} | {r['max_abs_diff_uint8']} | {r['device_idle_fraction']:.2f} |")
    return "\n".join(lines)


def versions() -> dict:
    import platform

    import diffusers

    import engine

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "diffusers": diffusers.__version__, "engine": engine.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="torch", help="engine backend (torch, compile, onnxruntime, tensorrt, auto)")
    p.add_argument("--model", default=None,
                   help="default: official-random on CUDA (official-size networks, random weights), tiny-random on CPU")
    p.add_argument("--resolutions", type=int, nargs="+", default=None, help="default: 256 512 on CUDA, 256 on CPU")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=None, choices=["jobs", "streams"],
                   help="default: jobs and streams (--quick: jobs)")
    p.add_argument("--frames", type=int, default=None, help="frames per job/stream (default 32; --quick 8)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 4; --quick 1)")
    p.add_argument("--guidance", type=float, default=None, help="default 1.5 (CFG); --quick 1.0")
    p.add_argument("--deepcache", type=int, default=3, help="DeepCache interval (0 disables)")
    p.add_argument("--max-batch", type=int, default=8, help="EnginePolicy.max_batch")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="EnginePolicy.max_wait_ms")
    p.add_argument("--quick", action="store_true", help="small settings that finish in minutes on a 2-core CPU")
    p.add_argument("--note", default="")
    p.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.model = args.model or ("official-random" if cuda and not args.quick else "tiny-random")
    args.resolutions = args.resolutions or ([256, 512] if cuda and not args.quick else [256])
    args.modes = args.modes or (["jobs"] if args.quick else ["jobs", "streams"])
    args.frames = args.frames or (8 if args.quick else 32)
    args.steps = args.steps or (1 if args.quick else 4)
    args.guidance = args.guidance if args.guidance is not None else (1.0 if args.quick else 1.5)
    return args


def main(argv: list[str] | None = None) -> dict:
    from engine.pipeline.config import resolve_config
    from engine.runtime import EnginePolicy

    args = parse_args(argv)
    config = resolve_config("reference", steps=args.steps, guidance_scale=args.guidance,
                            deepcache_interval=args.deepcache or None, deepcache_off=args.deepcache == 0)
    policy = EnginePolicy(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_active_jobs=max(args.streams),
                          max_queued_chunks=max(64, 4 * max(args.streams)))
    seconds = args.frames / 25
    streams = [synthetic_stream(k, args.frames, seconds) for k in range(max(args.streams))]
    rows, warmups, device = [], [], str(args.device)

    def report(complete: bool) -> dict:
        return {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None else argv,
            "machine": machine_info(args.note), "versions": versions(), "device": device, "model": args.model,
            "backend": args.backend, "complete": complete,
            "settings": {"frames_per_stream": args.frames, "steps": args.steps, "guidance": args.guidance,
                         "deepcache": args.deepcache, "policy": {"max_batch": args.max_batch,
                                                                 "max_wait_ms": args.max_wait_ms}},
            "tolerance": {"max_abs_diff_uint8": TOLERANCE[0], "min_equal_fraction": TOLERANCE[1]},
            "warm_up": warmups, "runs": rows,
        }

    def save_partial() -> None:  # after every row: a run killed by its caller's time limit keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.partial")
        tmp.write_text(json.dumps(report(False), indent=2))
        os.replace(tmp, args.out)

    for resolution in args.resolutions:
        sync = load(args.model, resolution, args.device, args.dtype, args.backend, policy)
        device = str(sync.core.device)
        full, tail = divmod(args.frames, config.chunk_frames)  # the chunk shapes the jobs will use
        sizes = range(1, min(args.max_batch, max(args.streams)) + 1)
        warm = sync.warm_up([config], batch_sizes=sizes if full else [], tails=[tail] if tail else [])
        warmups.append({"resolution": resolution, **warm})
        save_partial()
        for mode in args.modes:
            solo = solo_runs(sync, mode, streams, config)  # the first N of these are "N one after another"
            for n in args.streams:
                row = {"resolution": resolution, **measure(sync, mode, streams[:n], solo[:n], config)}
                rows.append(row)
                save_partial()
                print({k: row[k] for k in ("mode", "resolution", "streams", "aggregate_frames_per_s",
                                           "sequential_frames_per_s", "identical_to_solo", "max_abs_diff_uint8")},
                      flush=True)
        sync.close()
        del sync
    return publish(report(True), args.out, plot, table, rows_key="runs")


if __name__ == "__main__":
    main()
