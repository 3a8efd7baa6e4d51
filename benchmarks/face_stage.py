"""The CPU face stage at 1080x1920, before and after removing full-frame work: benchmarks/results/face_stage.json.

Per frame of the demo clip (PyAV decode, whose frames have padded rows), as the engine runs on the CPU:
- `face`: mediapipe tracking (mesh on the ROI of the last frame's points) + the alignment warp into the crop +
  the Lanczos resize to the model size. Before: the frame copied to a contiguous array for mediapipe's ROI warp
  and again for the alignment, and the whole frame converted to float (a fresh 24 MB buffer) for the warp;
  after: no copies, only the pixels the crop samples are converted, into a buffer kept by the aligner
  (`warp_affine_hwc`'s default).
- `restore`: pasting 16 generated faces into their frames (`PendingChunk._finish`): before, the stacked chunk
  was copied once more and all 16 frames ran as one pass (float windows of about 90 MB each); after, restore
  pastes into the stacked copy, one frame per pass on the CPU (`restore.CPU_FRAMES_PER_PASS`).
Before and after give the same crops and frames bit for bit (checked here on every frame, and by
tests/test_face_align.py). The variants alternate round by round, so both see the same machine load; the
ratio within this run is the figure to quote, not the absolute times on a shared machine.

    python benchmarks/face_stage.py --frames 32 --rounds 3 --resolution 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_utils import RESULTS, machine_info

SHARED = Path(os.environ.get("LATENTSYNC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CHUNK = 16


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def face_pass(frames: list[np.ndarray], resolution: int, before: bool) -> tuple[list, list]:
    """Track + align every frame, as `SourceCursor` does on the CPU: (faces [R,R,3], matrices [2,3])."""
    from engine.face.align import FaceAligner
    from engine.pipeline.faces import make_landmark_source

    landmarks = make_landmark_source("mediapipe", resolution)
    aligner = FaceAligner(resolution)
    faces, matrices = [], []
    for j, frame in enumerate(frames):
        seen = np.ascontiguousarray(frame) if before else frame  # before: mediapipe's ROI warp copied the frame
        points = landmarks.landmarks(j, seen)
        matrix = aligner.compute_matrices(points)[0]
        source = torch.from_numpy(np.ascontiguousarray(frame) if before else frame)  # before: copied again
        crop = aligner.align_batch(source[None], matrix[None], whole_frame=before)[0]
        faces.append(aligner.resize_to_model(crop.numpy()))
        matrices.append(matrix)
    return faces, matrices


def restore_pass(frames: list[np.ndarray], matrices: list[np.ndarray], decoded: torch.Tensor, resolution: int,
                 before: bool) -> list[np.ndarray]:
    """Restore chunks of 16, as `PendingChunk._finish` does: stack the chunk's frames, paste, back to numpy."""
    from engine.face.align import FaceAligner
    from engine.face.restore import _restore
    from engine.face.warp import as_matrices

    aligner = FaceAligner(resolution)
    crop_hw = (aligner.geometry.height, aligner.geometry.width)
    out = []
    for start in range(0, len(frames), CHUNK):
        stacked = torch.stack([torch.from_numpy(f) for f in frames[start:start + CHUNK]])  # [f,H,W,3] uint8
        mats = np.stack(matrices[start:start + CHUNK])
        faces = decoded[start:start + CHUNK]
        if before:  # the old restore_batch: a copy of the stacked chunk, all 16 frames in one pass
            restored = stacked.clone()
            _restore(restored, faces, as_matrices(mats), crop_hw, region_only=True)
        else:
            restored = aligner.restore_batch(stacked, faces, mats, inplace=True)
        out += list(restored.numpy())
    return out


def timed(fn) -> tuple[object, float, float]:
    cpu0, t0 = process_cpu_s(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, process_cpu_s() - cpu0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, default=SHARED / "media" / "demo1_video.mp4")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="before/after alternations (median reported)")
    p.add_argument("--resolution", type=int, default=256, choices=(256, 512))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS / "face_stage.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.media import iter_video_frames

    frames = [f.rgb for f in iter_video_frames(args.video, max_frames=args.frames)]
    generator = torch.Generator().manual_seed(0)
    decoded = torch.rand((len(frames), 3, args.resolution, args.resolution), generator=generator) * 2 - 1
    load_start = [round(x, 2) for x in os.getloadavg()]
    times: dict[str, dict[str, list[float]]] = {}
    reference = None
    for round_ in range(args.rounds + 1):  # round 0 warms up (models load, first-call costs) and is not kept
        for variant in ("before", "after"):
            before = variant == "before"
            (faces, matrices), face_s, face_cpu = timed(lambda: face_pass(frames, args.resolution, before))
            restored, restore_s, restore_cpu = timed(
                lambda: restore_pass(frames, matrices, decoded, args.resolution, before))
            result = (faces, matrices, restored)
            if reference is None:
                reference = result
            else:  # the same output, bit for bit
                assert all(np.array_equal(a, b) for a, b in zip(reference[0], faces)), "faces differ"
                assert all(np.array_equal(a, b) for a, b in zip(reference[1], matrices)), "matrices differ"
                assert all(np.array_equal(a, b) for a, b in zip(reference[2], restored)), "restored frames differ"
            if round_ == 0:
                continue
            entry = times.setdefault(variant, {})
            for name, value in (("face_wall", face_s), ("face_cpu", face_cpu), ("restore_wall", restore_s),
                                ("restore_cpu", restore_cpu)):
                entry.setdefault(name, []).append(1000 * value / len(frames))
            print(f"[face_stage] round {round_} {variant}: face {1000 * face_s / len(frames):.1f} ms/frame, "
                  f"restore {1000 * restore_s / len(frames):.1f} ms/frame", file=sys.stderr, flush=True)
    medians = {v: {k: round(statistics.median(x), 2) for k, x in entry.items()} for v, entry in times.items()}
    ratios = {k: round(medians["before"][k] / medians["after"][k], 2) for k in medians["after"]
              if medians["after"][k] > 0}
    from importlib.metadata import version

    report = {
        "benchmark": "face_stage",
        "command": "python benchmarks/face_stage.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine_info("shared CPU box: compare before/after within this run"),
                    "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {name: version(name) for name in ("torch", "numpy", "opencv-python-headless", "av",
                                                      "ai-edge-litert")},
        "inputs": {"video": args.video.name, "frame_size_hw": list(frames[0].shape[:2]), "frames": len(frames),
                   "frame_rows_padded": not frames[0].flags.c_contiguous, "resolution": args.resolution,
                   "rounds": args.rounds},
        "identical_output": True,  # asserted above on every round
        "ms_per_frame_median": medians, "ms_per_frame_rounds": times,
        "before_over_after": ratios,
        "stages": {"face": "mediapipe tracking + alignment warp + Lanczos resize (SourceCursor on the CPU)",
                   "restore": "restore_batch of chunks of 16 (PendingChunk._finish)",
                   "wall": "elapsed time", "cpu": "process CPU time, all threads"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ms_per_frame_median": medians, "before_over_after": ratios}, indent=2))
    return report


if __name__ == "__main__":
    main()
