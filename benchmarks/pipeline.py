"""Whole-pipeline benchmark: per-stage time and frames/s on a demo clip, written as JSON plus a plot.

CPU: the tiny-random model at 256 and 512 (numbers say where the non-U-Net stages
stand; the U-Net share is meaningless with tiny weights). CUDA: `--model official-random`
builds the real-size U-Net, VAE and Whisper encoder with random weights on the GPU (no
download); `--model latentsync-1.6` uses the real weights when they are in the cache.

    python benchmarks/pipeline.py --seconds 2 --resolutions 256 512
    python benchmarks/pipeline.py --model official-random --device cuda --resolutions 256 512 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench_utils import RESULTS, SHARED_MEDIA, machine_info, max_rss_mib, publish, pyplot, save_figure

MS = 1000.0
OTHER = "other"  # wall time no stage accounts for (model-free glue, SyncResult)


def prepare_clip(video: Path, audio: Path, seconds: float, size: tuple[int, int] | None, tmp: Path) -> tuple[Path, Path]:
    """`seconds` of the demo video (H.264, optionally resized) and the matching speech as a wav."""
    from engine.constants import SAMPLE_RATE
    from engine.media import cut_clip, load_audio, write_wav

    clip = tmp / "clip.mp4"
    cut_clip(video, clip, seconds=seconds, size=size)
    speech = tmp / "speech.wav"
    write_wav(speech, load_audio(audio)[: int(seconds * SAMPLE_RATE)], SAMPLE_RATE)
    return clip, speech


def load(model: str, resolution: int, device: str, dtype: str, face: str):
    """A LipSync for `model`; 'official-random' builds real-size random networks in memory."""
    from engine.pipeline.device import choose_placement
    from engine.pipeline.sdk import LipSync

    if model == "official-random":
        from random_models import official_random_models

        placement = choose_placement(device, dtype)
        models = official_random_models(device=placement.device, dtype=placement.dtype, resolution=resolution)
        return LipSync(models, placement, face=face)
    return LipSync.from_pretrained(model, device=device, dtype=dtype, face=face, resolution=resolution)


def _sync_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_once(sync, clip: Path, speech: Path, out: Path, settings: dict, warmup: int) -> dict:
    """Time one call (after `warmup` untimed calls) and break it down per stage."""
    for _ in range(warmup):
        sync(clip, speech, out, **settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync_cuda()
    load0, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    result = sync(clip, speech, out, **settings)
    _sync_cuda()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    frames = result.num_frames
    stages = dict(result.timings)
    stages[OTHER] = max(0.0, wall - sum(stages.values()))
    return {
        "model": result.model, "resolution": result.resolution, "device": result.device, "dtype": result.dtype,
        "config": asdict(result.config), "frames": frames, "source_frames": result.num_source_frames,
        "wall_s": round(wall, 3), "process_cpu_s": round(cpu, 3), "cpu_share": round(cpu / wall, 2),
        "frames_per_s": round(frames / wall, 3),
        "stage_s": {k: round(v, 4) for k, v in stages.items()},
        "stage_ms_per_frame": {k: round(v / frames * MS, 2) for k, v in stages.items()},
        "stage_frames_per_s": {k: round(frames / v, 2) for k, v in stages.items() if v > 0},
        "loadavg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mib": round(max_rss_mib(), 1),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }


def plot(rows: list[dict], path: Path) -> Path:
    """Stacked bars: ms per output frame per stage, one bar per (model, resolution)."""
    plt = pyplot()
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_ms_per_frame"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['model']}\n{r['resolution']}px {r['device']}" for r in rows]
    bottom = [0.0] * len(rows)
    colors = plt.get_cmap("tab20").colors  # more stages than the default 10-colour cycle
    for stage, color in zip(stages, colors * 2):
        values = [r["stage_ms_per_frame"].get(stage, 0.0) for r in rows]
        ax.bar(labels, values, bottom=bottom, label=stage, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, (total, row) in enumerate(zip(bottom, rows)):
        ax.text(x, total, f"{row['frames_per_s']:.2f} fps", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per output frame (wall)")
    ax.set_title("pipeline time per stage")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def table(rows: list[dict]) -> str:
    """Markdown table: ms per frame per stage, one column per row."""
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_ms_per_frame"]))
    head = "| stage (ms/frame) | " + " | ".join(f"{r['model']} {r['resolution']}px" for r in rows) + " |"
    lines = [head, "|" + "---|" * (len(rows) + 1)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{r['stage_ms_per_frame'].get(stage, 0.0):.1f}" for r in rows) + " |")
    lines.append("| **total wall s** | " + " | ".join(f"{r['wall_s']:.1f}" for r in rows) + " |")
    lines.append("| frames/s | " + " | ".join(f"{r['frames_per_s']:.3f}" for r in rows) + " |")
    lines.append("| CPU share (cpu s / wall s) | " + " | ".join(f"{r['cpu_share']:.2f}" for r in rows) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED_MEDIA / "demo1_video.mp4")
    parser.add_argument("--audio", type=Path, default=SHARED_MEDIA / "demo1_audio.wav")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of the clip cut from the demo")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="resize the clip (default: the source size, 1080x1920 for the demos)")
    parser.add_argument("--model", default="tiny-random",
                        help="tiny-random | official-random | latentsync-1.6 | latentsync-1.5 | a model folder")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's DDIM steps")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--deepcache", type=int, default=None, help="0 disables DeepCache")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--length", default="official", choices=["audio", "official"],
                        help="output length policy (official: N//2+2 frames, so a 0.56 s clip is one whole chunk)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--face", default="mediapipe")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls before the timed one (use 1 on CUDA)")
    parser.add_argument("--note", default="", help="free text stored with the machine description")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = {"preset": args.preset, "steps": args.steps, "guidance": args.guidance,
                "deepcache": args.deepcache, "seed": args.seed, "length": args.length}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip, speech = prepare_clip(args.video, args.audio, args.seconds, tuple(args.size) if args.size else None,
                                    Path(tmp))
        for resolution in args.resolutions:
            t0 = time.perf_counter()
            sync = load(args.model, resolution, args.device, args.dtype, args.face)
            load_s = time.perf_counter() - t0
            row = run_once(sync, clip, speech, Path(tmp) / "out.mp4", settings, args.warmup)
            row["load_s"] = round(load_s, 3)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "resolution", "frames", "wall_s", "frames_per_s")}),
                  flush=True)
            del sync
    report = {
        "machine": machine_info(args.note), "clip": {"video": str(args.video), "seconds": args.seconds,
                                                     "size": args.size},
        "settings": settings, "warmup": args.warmup, "rows": rows,
    }
    return publish(report, args.out, plot, table)


if __name__ == "__main__":
    main()
