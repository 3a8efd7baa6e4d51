"""Whole-pipeline benchmark: per-stage time and frames/s on a demo clip, written as JSON plus a plot.

CPU: the tiny-random model at 256 and 512 (numbers say where the non-U-Net stages
stand; the U-Net share is meaningless with tiny weights). CUDA: add
`--model latentsync-1.6` for the real-size networks.

    python benchmarks/pipeline.py --seconds 2 --resolutions 256 512
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def run_once(model: str, resolution: int, video: Path, audio: Path, seconds: float, preset: str,
             device: str, dtype: str, face: str) -> dict:
    from engine.media import cut_clip
    from engine.pipeline.sdk import LipSync

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        cut_clip(video, clip, seconds=seconds)
        speech = Path(tmp) / "speech.wav"
        from engine.media import load_audio, write_wav

        samples = load_audio(audio)[: int(seconds * 16000)]
        write_wav(speech, samples, 16000)
        sync = LipSync.from_pretrained(model, device=device, dtype=dtype, face=face, resolution=resolution)
        t0 = time.perf_counter()
        result = sync(clip, speech, Path(tmp) / "out.mp4", preset=preset)
        wall = time.perf_counter() - t0
    stages = result.timings
    return {
        "model": model, "resolution": resolution, "preset": preset, "frames": result.num_frames,
        "wall_s": round(wall, 3), "frames_per_s": round(result.num_frames / wall, 3),
        "stage_s": stages,
        "stage_frames_per_s": {k: round(result.num_frames / v, 2) for k, v in stages.items() if v > 0},
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted({s for r in rows for s in r["stage_s"]})
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0.0] * len(rows)
    labels = [f"{r['model']}\n{r['resolution']}px" for r in rows]
    for stage in stages:
        values = [r["stage_s"].get(stage, 0.0) / r["frames"] * 1000 for r in rows]
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("ms per output frame")
    ax.set_title("pipeline time per stage")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED_MEDIA / "demo1_video.mp4")
    parser.add_argument("--audio", type=Path, default=SHARED_MEDIA / "demo1_audio.wav")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--face", default="mediapipe")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args()
    rows = [run_once(args.model, r, args.video, args.audio, args.seconds, args.preset, args.device, args.dtype,
                     args.face) for r in args.resolutions]
    report = {
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "seconds_of_video": args.seconds, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
