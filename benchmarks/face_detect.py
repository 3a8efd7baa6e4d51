"""Face finding on CPU: mediapipe-source speed at 1080x1920 and its distance to the golden FaceMesh landmarks.

Usage: python benchmarks/face_detect.py [--frames 100] [--threads 1 2]
Writes benchmarks/results/face_detect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEMPLATE_256 = np.array([[47.6, 56.0], [162.4, 56.0], [105.0, 112.0]])  # spec §5.5, crop 210x280
CROP_256 = (210, 280)


def decode(path: Path, count: int) -> list[np.ndarray]:
    from engine.media import iter_video_frames

    return [f.rgb for f in iter_video_frames(path, max_frames=count)]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """[2,3] Procrustes similarity src -> dst as spec §5.4 steps 1-5 (no smoothing): a quick stand-in for the aligner."""
    src, dst = src.astype(np.float64), dst.astype(np.float64)
    cs, cd = src.mean(0), dst.mean(0)
    s0, d0 = src - cs, dst - cd
    ss, sd = s0.std(ddof=1), d0.std(ddof=1)
    u, _, vt = np.linalg.svd((s0 / ss).T @ (d0 / sd))
    r = vt.T @ u.T
    if np.linalg.det(r) < 0:
        vt[-1] *= -1
        r = vt.T @ u.T
    a = (sd / ss) * r
    return np.hstack([a, (cd - a @ cs)[:, None]])


def golden_comparison(source, frames: list[np.ndarray]) -> dict:
    from safetensors.numpy import load_file

    inputs = load_file(str(SHARED / "golden" / "e2e_demo1" / "inputs.safetensors"))
    origin = inputs["crop_origin_xy"].astype(np.float32)
    ours = np.stack([source.detect(i, f).landmarks3 for i, f in enumerate(frames[:32])]) - origin
    gold = inputs["landmarks3"]
    err = np.abs(ours - gold)
    dist = np.linalg.norm(ours - gold, axis=-1)
    crop_diff, corner_shift = [], []
    for i, frame in enumerate(frames[:32]):
        shifted = np.float32([[1, 0, -origin[0]], [0, 1, -origin[1]]])  # golden points live in the 320 crop
        a = similarity(ours[i], TEMPLATE_256) @ np.vstack([shifted, [0, 0, 1]])
        b = similarity(gold[i], TEMPLATE_256) @ np.vstack([shifted, [0, 0, 1]])
        crop_a = cv2.warpAffine(frame, a, CROP_256, borderValue=(127, 127, 127)).astype(np.int16)
        crop_b = cv2.warpAffine(frame, b, CROP_256, borderValue=(127, 127, 127)).astype(np.int16)
        crop_diff.append(float(np.abs(crop_a - crop_b).mean()))
        corners = np.array([[0, 0], [CROP_256[0], 0], [0, CROP_256[1]], [CROP_256[0], CROP_256[1]]], np.float64)
        inv_a, inv_b = cv2.invertAffineTransform(a), cv2.invertAffineTransform(b)
        pa, pb = corners @ inv_a[:, :2].T + inv_a[:, 2], corners @ inv_b[:, :2].T + inv_b[:, 2]
        corner_shift.append(float(np.linalg.norm(pa - pb, axis=1).max()))
    return {
        "frames": len(ours),
        "coord_abs_error_mean_px": float(err.mean()), "coord_abs_error_max_px": float(err.max()),
        "point_distance_mean_px": float(dist.mean()), "point_distance_max_px": float(dist.max()),
        "exact_coordinates_fraction": float((err == 0).mean()),
        "frames_all_exact": int((err.reshape(len(err), -1).max(axis=1) == 0).sum()),
        "aligned_crop_256_mean_abs_diff": float(np.mean(crop_diff)),
        "aligned_crop_256_max_mean_abs_diff": float(np.max(crop_diff)),
        "crop_corner_shift_max_px_in_frame": float(np.max(corner_shift)),
    }


def speed(source, frames: list[np.ndarray], repeats: int = 1) -> dict:
    source.detect(0, frames[0])  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for i, frame in enumerate(frames):
            source.detect(i, frame)
    seconds = time.perf_counter() - t0
    n = repeats * len(frames)
    t1 = time.perf_counter()
    for frame in frames:
        source.detect_boxes(frame)
    det_only = time.perf_counter() - t1
    return {"frames": n, "fps": n / seconds, "ms_per_frame": 1000 * seconds / n,
            "blazeface_only_ms_per_frame": 1000 * det_only / len(frames)}


def scan_clip(source, path: Path) -> dict:
    """The tracker over a whole clip: how many frames have a face, the no-face ranges, detect time per frame."""
    from engine.face.detection import FaceTracker

    frames = decode(path, 10**6)
    t0 = time.perf_counter()
    track = FaceTracker(source).scan(enumerate(frames))
    seconds = time.perf_counter() - t0
    return {"frames": len(frames), "with_face": sum(r.observation is not None for r in track.results),
            "no_face_ranges": track.no_face_ranges, "scan_ms_per_frame": 1000 * seconds / len(frames)}


def main() -> int:
    from engine.face.detection.mediapipe import MediapipeFaceSource

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    frames = decode(SHARED / "media" / "demo1_video.mp4", max(args.frames, 32))
    report = {"frame_size": list(frames[0].shape[1::-1]), "cpu_threads_available": cv2.getNumberOfCPUs(),
              "load_average_at_start": list(os.getloadavg())}
    report["golden_e2e_demo1"] = golden_comparison(MediapipeFaceSource(num_threads=1), frames)
    report["scan"] = {name: scan_clip(MediapipeFaceSource(num_threads=1), SHARED / "media" / name)
                      for name in ("demo1_video.mp4", "demo2_video.mp4")}
    report["speed"] = {str(t): speed(MediapipeFaceSource(num_threads=t), frames[: args.frames]) for t in args.threads}
    out = ROOT / "benchmarks" / "results" / "face_detect.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
