"""The x264 preset trade-off on the demo clips at 1080x1920: encode CPU ms/frame, bytes per second, PSNR.

Encodes the first --frames decoded frames of each clip with the engine's own VideoWriter (libx264, crf 18, the
writer's RGB -> yuv420p conversion, no audio) once per preset, then decodes the file and compares it with the
frames it was given (PSNR over RGB, 8-bit peak). CPU time is the process's (x264's own threads included) over the
encode, so it is what a job's encode stage costs the machine; wall time is shown too (the box is shared).

    python benchmarks/encode_presets.py --out benchmarks/results/encode_presets.json
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_utils import RESULTS, machine_info, publish, pyplot, save_figure

SHARED = Path(os.environ.get("LATENTSYNC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PRESETS = ("medium", "fast", "veryfast", "superfast", "ultrafast")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode(path: Path, count: int) -> np.ndarray:
    from engine.media import iter_video_frames

    frames = []
    for frame in iter_video_frames(path, fps=25):
        frames.append(frame.rgb)
        if len(frames) >= count:
            break
    return np.stack(frames)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(frames: np.ndarray, preset: str, crf: int, tmp: Path) -> dict:
    from engine.media import VideoWriter

    out = tmp / f"{preset}.mp4"
    h, w = frames.shape[1:3]
    c0, t0 = cpu_s(), time.perf_counter()
    with VideoWriter(out, w, h, crf=crf, preset=preset) as writer:
        for rgb in frames:
            writer.write(rgb)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    decoded = decode(out, len(frames))
    n = len(frames)
    return {"preset": preset, "crf": crf, "frames": n, "cpu_ms_per_frame": round(1000 * cpu / n, 2),
            "wall_ms_per_frame": round(1000 * wall / n, 2), "bytes": out.stat().st_size,
            "bytes_per_s": round(out.stat().st_size / (n / 25), 1),
            "psnr_db": round(float(np.mean([psnr(a, b) for a, b in zip(frames, decoded)])), 3)}


def plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for clip in sorted({r["clip"] for r in rows}):
        mine = [r for r in rows if r["clip"] == clip]
        ax1.plot([r["preset"] for r in mine], [r["cpu_ms_per_frame"] for r in mine], marker="o", label=clip)
        ax2.plot([r["bytes_per_s"] / 1e6 for r in mine], [r["psnr_db"] for r in mine], marker="o", label=clip)
        for r in mine:
            ax2.annotate(r["preset"], (r["bytes_per_s"] / 1e6, r["psnr_db"]), fontsize=7)
    ax1.set_ylabel("encode CPU ms per 1080x1920 frame")
    ax2.set_xlabel("MB per second of video")
    ax2.set_ylabel("PSNR vs input (dB)")
    ax1.legend()
    fig.suptitle("libx264 crf 18 presets on the demo clips (measured)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def table(rows: list[dict]) -> str:
    lines = ["| clip | preset | CPU ms/frame | MB/s | PSNR dB |", "|---|---|---|---|---|"]
    lines += [f"| {r['clip']} | {r['preset']} | {r['cpu_ms_per_frame']} | {r['bytes_per_s'] / 1e6:.2f} | "
              f"{r['psnr_db']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--clips", nargs="+", default=["demo1", "demo2"])
    p.add_argument("--out", type=Path, default=RESULTS / "encode_presets.json")
    args = p.parse_args(argv)
    rows = []
    start = machine_info()
    with tempfile.TemporaryDirectory(prefix="encode-presets-") as tmp:
        for clip in args.clips:
            frames = decode(SHARED / "media" / f"{clip}_video.mp4", args.frames)
            for preset in args.presets:
                rows.append({"clip": clip, "size": f"{frames.shape[2]}x{frames.shape[1]}",
                             **measure(frames, preset, args.crf, Path(tmp))})
                print(rows[-1], file=sys.stderr, flush=True)
    machine = machine_info()
    machine["loadavg_start"] = start["loadavg_1_5_15"]
    report = {"benchmark": "encode_presets",
              "command": "python benchmarks/encode_presets.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine, "rows": rows}
    return publish(report, args.out, plot, table)


if __name__ == "__main__":
    main()
