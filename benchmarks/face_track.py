"""Face-track stability of the offline face source: mediapipe video mode (the default) against static mode.

Per clip and mode: the jitter of the three alignment points (second difference per frame, px and % of the brow
distance), the eyebrow-line angle (the first two points) and its outliers against a running median, and how many
frames ran the detector. A synthetic clip made by warping one real frame with known rotations, scales and
translations (smooth motion, then a cutaway to black and back at a moved place) gives a ground truth: the base frame's points moved by the same warp;
the error of each mode against it is reported. With `--reference DIR` (files from
benchmarks/face_track_reference.py, which runs the mediapipe package itself) each mode is also compared with
mediapipe's own output on all 468 points.

Usage: python benchmarks/face_track.py [--clips demo1 demo2] [--reference DIR] [--out benchmarks/results/face_track.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import RESULTS, SHARED_MEDIA, machine_info  # noqa: E402

MODES = {"video": "mediapipe", "static": "mediapipe-static"}  # benchmark name -> --face spec
MEDIAN_HALF_WINDOW = 6  # frames each side of the running median the angle is compared with
ANGLE_OUTLIER_DEG = 3.0  # |angle - running median| above this is an outlier
SYNTHETIC_FRAMES = 100
CUTAWAY = (70, 75)  # synthetic frames [start, stop) replaced by black: tracking is lost and must re-detect
MOVE_AFTER_CUTAWAY_PX = (60.0, -45.0)  # where the face is when it comes back (within the tracker's continuity)


def track(spec: str, frames: list[np.ndarray]) -> dict:
    """Run a fresh tracker over `frames`: three points [T,3,2] (NaN: no face), all points, how each was found."""
    from engine.face.detection import FaceTracker, make_face_source

    tracker = FaceTracker(make_face_source(spec))
    points = np.full((len(frames), 3, 2), np.nan, np.float32)
    mesh = np.full((len(frames), 468, 2), np.nan, np.float32)
    how = []
    t0 = time.perf_counter()
    for i, rgb in enumerate(frames):
        observation = tracker.update(i, rgb)
        how.append(tracker.last_result.how)
        if observation is not None:
            points[i], mesh[i] = observation.landmarks3, observation.landmarks
    seconds = time.perf_counter() - t0
    return {"points": points, "mesh": mesh, "how": how, "ms_per_frame": 1e3 * seconds / len(frames)}


def brow_angle(points: np.ndarray) -> np.ndarray:
    """[T,3,2] -> [T] degrees of the line from the image-left brow point to the image-right one (0 = level)."""
    d = points[:, 1] - points[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def running_median(x: np.ndarray, half: int = MEDIAN_HALF_WINDOW) -> np.ndarray:
    padded = np.pad(x, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"mean": None, "p95": None, "max": None}
    return {"mean": round(float(x.mean()), 3), "p95": round(float(np.percentile(x, 95)), 3),
            "max": round(float(x.max()), 3)}


def stability(run: dict) -> dict:
    """Jitter and angle figures of one tracked clip."""
    p = run["points"].astype(np.float64)
    accel = np.linalg.norm(p[2:] - 2 * p[1:-1] + p[:-2], axis=-1).mean(axis=1)  # [T-2] px, mean of 3 points
    brow = np.linalg.norm(p[:, 1] - p[:, 0], axis=-1)
    angle = brow_angle(p)
    deviation = np.abs(angle - running_median(angle))
    outliers = np.flatnonzero(deviation > ANGLE_OUTLIER_DEG)
    return {
        "frames": len(p), "no_face_frames": int(np.isnan(p[:, 0, 0]).sum()),
        "detector_frames": run["how"].count("detected"), "tracked_frames": run["how"].count("tracked"),
        "ms_per_frame": round(run["ms_per_frame"], 2),
        "jitter_px": stats(accel), "jitter_pct_of_brow_distance": stats(100 * accel / brow[1:-1]),
        "angle_deg": stats(np.abs(angle)), "angle_step_deg": stats(np.abs(np.diff(angle))),
        "angle_outliers": {"threshold_deg": ANGLE_OUTLIER_DEG, "median_window": 2 * MEDIAN_HALF_WINDOW + 1,
                           "count": int(outliers.size), "frames": outliers.tolist()[:50],
                           "max_deviation_deg": round(float(deviation.max()), 2)},
        "last10_angle_deg": [round(float(a), 1) for a in angle[-10:]],
    }


def reference_error(run: dict, reference: np.ndarray) -> dict:
    """Our port against the mediapipe package on the same frames: all 468 points and the three points."""
    from engine.face.detection import FACEMESH_468_GROUPS, three_points

    err = np.abs(run["mesh"] - reference)  # [T,468,2]
    ref3 = np.stack([three_points(r, FACEMESH_468_GROUPS) for r in reference])
    err3 = np.abs(run["points"] - ref3)
    return {"frames": len(reference), "mesh_max_px": round(float(np.nanmax(err)), 3),
            "mesh_mean_px": round(float(np.nanmean(err)), 4), "points3_max_px": round(float(np.nanmax(err3)), 3),
            "points3_identical": round(float((err3 == 0).mean()), 4)}


def synthetic_warps(n: int, centre: tuple[float, float]) -> list[np.ndarray]:
    """n [2,3] similarity warps about `centre`: smooth rotation (+-20 deg), scale (0.85-1.15), translation; the face
    is MOVE_AFTER_CUTAWAY_PX further when it comes back after the cutaway."""
    warps = []
    for t in range(n):
        angle = 20.0 * math.sin(2 * math.pi * t / 50)
        scale = 1.0 + 0.15 * math.sin(2 * math.pi * t / 40)
        m = cv2.getRotationMatrix2D(centre, angle, scale)
        m[0, 2] += 60.0 * math.sin(2 * math.pi * t / 60)
        m[1, 2] += 40.0 * math.sin(2 * math.pi * t / 45)
        if t >= CUTAWAY[0]:
            m[:, 2] += MOVE_AFTER_CUTAWAY_PX
        warps.append(m)
    return warps


def synthetic(frame: np.ndarray) -> dict:
    """Both modes on one frame warped by known similarities; errors against the warped base points."""
    from engine.face.detection import make_face_source

    base = make_face_source("mediapipe-static").detect(0, frame)
    truth_base = base.landmarks3.astype(np.float64)
    centre = tuple(float(v) for v in truth_base.mean(axis=0))
    warps = synthetic_warps(SYNTHETIC_FRAMES, centre)
    frames = [cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR) for m in warps]
    truth = np.stack([truth_base @ m[:, :2].T + m[:, 2] for m in warps])  # [T,3,2]
    face = np.ones(len(frames), bool)
    face[CUTAWAY[0]:CUTAWAY[1]] = False
    for t in np.flatnonzero(~face):
        frames[t] = np.zeros_like(frame)
    out = {"frames": SYNTHETIC_FRAMES, "rotation_deg": 20.0, "scale": [0.85, 1.15], "translation_px": [60, 40],
           "cutaway": {"frames": list(CUTAWAY), "then_moved_px": list(MOVE_AFTER_CUTAWAY_PX)},
           "truth": "the base frame's three points (static detection) moved by each frame's warp; errors over the "
                    "frames that show the face", "modes": {}}
    for mode, spec in MODES.items():
        run = track(spec, frames)
        err = np.linalg.norm(run["points"] - truth, axis=-1).mean(axis=1)[face]  # px, frames with a face
        angle_err = np.abs(brow_angle(run["points"].astype(np.float64)) - brow_angle(truth))[face]
        missed = [int(t) for t in np.flatnonzero(face) if run["how"][t] == "none"]
        out["modes"][mode] = {"error_px": stats(err), "angle_error_deg": stats(angle_err),
                              "error_px_after_cutaway": stats(err[CUTAWAY[0]:]),
                              "detector_frames": run["how"].count("detected"),
                              "missed_face_frames": len(missed), "missed": missed[:50],
                              "found_in_cutaway": int(sum(run["how"][t] != "none" for t in np.flatnonzero(~face)))}
    return out


def table(report: dict) -> str:
    lines = ["| clip | mode | jitter px mean / p95 / max | angle outliers | last 10 angles (deg) | detector frames |",
             "|---|---|---|---|---|---|"]
    for clip, modes in report["clips"].items():
        for mode, r in modes.items():
            j = r["stability"]["jitter_px"]
            a = r["stability"]["last10_angle_deg"]
            lines.append(f"| {clip} | {mode} | {j['mean']} / {j['p95']} / {j['max']} | "
                         f"{r['stability']['angle_outliers']['count']} | {min(a)} .. {max(a)} | "
                         f"{r['stability']['detector_frames']} / {r['stability']['frames']} |")
    lines += ["", "| synthetic | error px mean / p95 / max | angle error deg mean / max | missed faces | "
              "detector frames |", "|---|---|---|---|---|"]
    for mode, r in report["synthetic"]["modes"].items():
        e, a = r["error_px"], r["angle_error_deg"]
        lines.append(f"| {mode} | {e['mean']} / {e['p95']} / {e['max']} | {a['mean']} / {a['max']} | "
                     f"{r['missed_face_frames']} | {r['detector_frames']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["demo1", "demo2"], help="names of <media>/<clip>_video.mp4")
    parser.add_argument("--media", type=Path, default=SHARED_MEDIA)
    parser.add_argument("--reference", type=Path, help="folder of mp_ref_<clip>.npz (face_track_reference.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "face_track.json")
    args = parser.parse_args()

    from engine.media import iter_video_frames

    report = {"benchmark": "face_track", "command": " ".join(["python", *sys.argv]), "machine": machine_info(),
              "versions": _versions(), "clips": {}}
    first_frame = None
    for clip in args.clips:
        frames = [f.rgb for f in iter_video_frames(args.media / f"{clip}_video.mp4", fps=25)]
        first_frame = first_frame if first_frame is not None else frames[0]
        reference = None
        if args.reference is not None and (args.reference / f"mp_ref_{clip}.npz").is_file():
            reference = np.load(args.reference / f"mp_ref_{clip}.npz")
        report["clips"][clip] = {}
        for mode, spec in MODES.items():
            run = track(spec, frames)
            entry = {"face": spec, "stability": stability(run)}
            if reference is not None:
                entry["vs_mediapipe_package"] = {"mediapipe": str(reference["version"]), "mode": mode,
                                                 **reference_error(run, reference[mode])}
                package = stability({"points": _points3(reference[mode]), "how": [], "ms_per_frame": float("nan")})
                entry["mediapipe_package_stability"] = {k: v for k, v in package.items()
                                                        if k not in ("detector_frames", "tracked_frames", "ms_per_frame")}
            report["clips"][clip][mode] = entry
        del frames
    report["synthetic"] = synthetic(first_frame)
    report["machine"]["loadavg_end"] = machine_info()["loadavg_1_5_15"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {args.out}")


def _points3(mesh: np.ndarray) -> np.ndarray:
    from engine.face.detection import FACEMESH_468_GROUPS, three_points

    return np.stack([three_points(m, FACEMESH_468_GROUPS) for m in mesh])


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("ai-edge-litert", "numpy", "opencv-python-headless", "av"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
