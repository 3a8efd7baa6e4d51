"""Face-path throughput on a real clip: each stage timed on its own, frames/s into benchmarks/results/face.json.

Stages are functions in `STAGES` (name -> fn(ctx) -> frames processed, run in order, each may leave results in
ctx for the next), with optional untimed setup in `PREPARE`; detection, decode and encode stages are added by
their owners the same way. Usage:
    .venv/bin/python benchmarks/face.py [--frames 48] [--resolution 512] [--device cpu] [--whole-frames 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.numpy import load_file

from engine.face import FaceAligner, prepare_masks_and_masked_images

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTSYNC_SHARED", REPO.parent / "shared"))
VIDEO = SHARED / "media" / "demo1_video.mp4"
E2E_ORIGIN_FRAMES = 32  # golden e2e_demo1: landmarks of frames 0..31 in a crop at crop_origin_xy
FACE_GOLDEN_FIRST = 40  # golden face_align_512: landmarks of frames 40..47 in a crop at (410, 560)
FACE_GOLDEN_ORIGIN = np.array([410, 560], np.float32)
CHUNK = 16  # frames per batched call (the U-Net chunk)


@dataclass
class BenchContext:
    """Inputs shared by the stages; stages may fill later fields (crops, faces) for the next ones."""

    frames: torch.Tensor  # [N,H,W,3] uint8
    landmarks: np.ndarray  # [N,3,2] float32, full-frame pixels
    aligner: FaceAligner
    whole_frames: int  # frames for the (slow) whole-frame restore reference
    matrices: np.ndarray | None = None  # [N,2,3]
    crops: torch.Tensor | None = None  # [N,h,w,3] uint8
    faces: np.ndarray | None = None  # [N,R,R,3] uint8
    decoded: torch.Tensor | None = None  # [N,3,R,R] float, a stand-in for the VAE output
    notes: dict = field(default_factory=dict)


def decode_frames(path: Path, count: int) -> np.ndarray:
    """First `count` frames as RGB uint8 [N,H,W,3] (engine.media: PyAV, no resampling at 25 fps)."""
    from engine.media import iter_video_frames

    return np.stack([f.rgb for f in iter_video_frames(path, max_frames=count)])


def golden_landmarks(count: int) -> np.ndarray:
    """Full-frame 3-point landmarks for frames 0..count-1 of demo1 from the golden fixtures (interpolated gap)."""
    golden = SHARED / "golden"
    e2e = load_file(str(golden / "e2e_demo1" / "inputs.safetensors"))
    known = {i: lm + e2e["crop_origin_xy"].astype(np.float32) for i, lm in enumerate(e2e["landmarks3"])}
    face = load_file(str(golden / "face_align_512_fp32.safetensors"))["landmarks3"]
    known.update({FACE_GOLDEN_FIRST + i: lm + FACE_GOLDEN_ORIGIN for i, lm in enumerate(face)})
    keys = np.array(sorted(known))
    values = np.stack([known[k] for k in keys]).reshape(len(keys), -1)
    wanted = np.arange(count)
    out = np.stack([np.interp(wanted, keys, values[:, j]) for j in range(values.shape[1])], axis=1)
    return np.round(out).reshape(count, 3, 2).astype(np.float32)


def _chunks(n: int):
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def stage_align(ctx: BenchContext) -> int:
    ctx.aligner.reset()
    ctx.matrices = ctx.aligner.compute_matrices(ctx.landmarks)
    ctx.crops = torch.cat([ctx.aligner.align_batch(ctx.frames[s], ctx.matrices[s]) for s in _chunks(len(ctx.frames))])
    return len(ctx.frames)


def stage_resize(ctx: BenchContext) -> int:
    ctx.faces = ctx.aligner.resize_batch_to_model(ctx.crops).cpu().numpy()  # cv2 on CPU, torch port elsewhere
    return len(ctx.faces)


def stage_mask_prep(ctx: BenchContext) -> int:
    faces = torch.from_numpy(ctx.faces).to(ctx.aligner.device)
    for s in _chunks(len(faces)):
        prepare_masks_and_masked_images(faces[s])
    return len(faces)


def prepare_restore_region(ctx: BenchContext) -> None:
    ctx.notes["target"] = ctx.frames.clone()  # the engine pastes into frames it owns; this copy is not timed
    pixel = torch.from_numpy(ctx.faces).to(ctx.aligner.device).permute(0, 3, 1, 2).float() / 127.5 - 1
    ctx.decoded = pixel.flip(2)  # a face that differs from the original, like the decoder's output


def stage_restore_region(ctx: BenchContext) -> int:
    out = ctx.notes["target"]
    for s in _chunks(len(out)):
        ctx.aligner.restore_batch(out[s], ctx.decoded[s], ctx.matrices[s], inplace=True)
    ctx.notes["region_out"] = out[: ctx.whole_frames]
    return len(out)


def stage_restore_whole(ctx: BenchContext) -> int:
    n = ctx.whole_frames
    outs = [ctx.aligner.restore_batch(ctx.frames[i:i + 1], ctx.decoded[i:i + 1], ctx.matrices[i:i + 1],
                                      region_only=False) for i in range(n)]  # the official: one frame at a time
    ctx.notes["whole_out"] = torch.cat(outs)
    return n


STAGES: dict[str, Callable[[BenchContext], int]] = {
    "align": stage_align,
    "resize": stage_resize,
    "mask_prep": stage_mask_prep,
    "restore_region": stage_restore_region,
    "restore_whole_frame": stage_restore_whole,
}
PREPARE: dict[str, Callable[[BenchContext], None]] = {"restore_region": prepare_restore_region}  # untimed setup


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = decode_frames(Path(args.video), args.frames)
    ctx = BenchContext(torch.from_numpy(frames), golden_landmarks(len(frames)),
                       FaceAligner(args.resolution, device=args.device), min(args.whole_frames, len(frames)))
    results = {}
    for name, stage in STAGES.items():
        best, best_cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            if name in PREPARE:
                PREPARE[name](ctx)
            if ctx.aligner.device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            count = stage(ctx)
            if ctx.aligner.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        results[name] = {"frames": count, "seconds": best, "fps": count / best, "ms_per_frame": 1000 * best / count,
                         "cpu_seconds": best_cpu, "cpu_ms_per_frame": 1000 * best_cpu / count}
        print(f"{name:22s} {count:4d} frames  wall {1000 * best / count:9.2f} ms/frame ({count / best:7.2f} frames/s)"
              f"  process CPU {1000 * best_cpu / count:9.2f} ms/frame")
    identical = torch.equal(ctx.notes["region_out"], ctx.notes["whole_out"])
    speedup = results["restore_whole_frame"]["ms_per_frame"] / results["restore_region"]["ms_per_frame"]
    cpu_speedup = results["restore_whole_frame"]["cpu_ms_per_frame"] / results["restore_region"]["cpu_ms_per_frame"]
    print(f"region restore == whole-frame restore: {identical}; speed-up wall {speedup:.1f}x, CPU {cpu_speedup:.1f}x")
    return {
        "video": str(args.video), "frame_size_hw": list(frames.shape[1:3]), "resolution": args.resolution,
        "device": args.device, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_average": list(os.getloadavg()), "repeats": args.repeats, "chunk": CHUNK,
        "stages": results, "region_equals_whole_frame": identical, "restore_speedup": speedup, "restore_speedup_cpu": cpu_speedup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(VIDEO))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--resolution", type=int, default=512, choices=(256, 512))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--whole-frames", type=int, default=4, help="frames for the whole-frame restore reference")
    parser.add_argument("--repeats", type=int, default=2, help="runs per stage; the fastest counts")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "face.json"))
    args = parser.parse_args()
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
