"""R20 check: peak RSS of a whole file-to-file run against input length (flat means frames are streamed).

A long input is synthesised by looping 2 s of demo1 (downscaled, H.264) with speech of the same
length looped from demo1's audio. Each length runs in a fresh subprocess (argument list, no shell)
so peaks are independent; a thread samples VmRSS. Settings are the cheapest faithful ones: one DDIM
step, guidance 1.0 (no CFG), no DeepCache, mp4 output, faces from landmarks detected once on the 2 s
clip and tiled (or only on the first chunk with `--faces first-chunk`, so long inputs mostly pass
through decode -> frame store -> encode, which is where a hold-everything design would grow).

    python benchmarks/memory.py --lengths 30 60 120
    python benchmarks/memory.py --lengths 30 60 120 --model micro-random --faces first-chunk
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_utils import (
    RESULTS,
    SHARED_MEDIA,
    RssSampler,
    machine_info,
    max_rss_mib,
    publish,
    pyplot,
    save_figure,
    status_mib,
)

BASE_SECONDS = 2.0
BASE_SIZE = (540, 960)  # (w, h): demo1 downscaled 2x
BYTES_PER_MIB = 2**20
SAMPLE_INTERVAL_S = 0.1
FACE_MODES = ("all", "first-chunk")
RUN_SETTINGS = dict(steps=1, guidance=1.0, deepcache=0, seed=1247, length="official")  # whole chunks


# ---------------------------------------------------------------- synthesis (parent)
def base_clip(video: Path, work: Path, resolution: int, seconds: float = BASE_SECONDS) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames [H,W,3] of `seconds` of `video` at BASE_SIZE and their landmarks [T,3,2] (mediapipe, once)."""
    from engine.media import cut_clip, iter_video_frames
    from engine.pipeline.faces import make_landmark_source

    clip = work / "base.mp4"
    cut_clip(video, clip, seconds=seconds, size=BASE_SIZE)
    frames = [f.rgb for f in iter_video_frames(clip)]
    source = make_landmark_source("mediapipe", resolution)
    points = [source.landmarks(i, f) for i, f in enumerate(frames)]
    missing = [i for i, p in enumerate(points) if p is None]
    if missing:
        raise RuntimeError(f"base clip: expected a face in every frame, found none in {missing}")
    return frames, np.stack(points).astype(np.float32)


def write_long_input(frames: list[np.ndarray], speech: np.ndarray, seconds: float, work: Path) -> tuple[Path, Path]:
    """`seconds` of the base frames looped (plain loop) as H.264, and the speech looped to the same length."""
    from engine.constants import FPS, SAMPLE_RATE
    from engine.media import VideoWriter, write_wav

    count = round(seconds * FPS)
    video = work / f"long_{seconds:g}s.mp4"
    h, w = frames[0].shape[:2]
    with VideoWriter(video, w, h, fps=FPS, crf=23, preset="ultrafast") as writer:
        for i in range(count):
            writer.write(frames[i % len(frames)])
    samples = int(seconds * SAMPLE_RATE)
    audio = work / f"long_{seconds:g}s.wav"
    write_wav(audio, np.resize(speech, samples).astype(np.float32), SAMPLE_RATE)
    return video, audio


def tiled_landmarks(base: np.ndarray, count: int, faces: str, chunk: int) -> np.ndarray:
    """[count,3,2]: base landmarks repeated in the video's loop order; NaN (no face) past the first chunk if asked."""
    tiled = base[np.arange(count) % len(base)].copy()
    if faces == "first-chunk":
        tiled[chunk:] = np.nan
    return tiled


# ---------------------------------------------------------------- one length (child)
def child(video: Path, audio: Path, landmarks: Path, model: str, resolution: int, out: Path) -> dict:
    """Run the pipeline once on `video` + `audio` and report its memory; written to `out` as JSON."""
    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.sdk import LipSync

    with RssSampler(SAMPLE_INTERVAL_S) as sampler:
        rss_start = status_mib("VmRSS")
        sync = LipSync.from_pretrained(model, device="cpu", dtype="fp32", resolution=resolution)
        rss_loaded = status_mib("VmRSS")
        source = LandmarkArraySource(np.load(landmarks))
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = sync(video, audio, out.with_suffix(".mp4"), face=source, **RUN_SETTINGS)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rss_end = status_mib("VmRSS")  # steady state: what the run still holds once every frame is out
    report = {
        "frames": result.num_frames, "no_face_frames": sum(b - a for a, b in result.no_face_ranges),
        "wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2), "frames_per_s": round(result.num_frames / wall, 3),
        "rss_start_mib": round(rss_start, 1), "rss_after_load_mib": round(rss_loaded, 1),
        "peak_rss_sampled_mib": round(sampler.peak_mib, 1), "peak_rss_hwm_mib": round(status_mib("VmHWM"), 1),
        "peak_rss_getrusage_mib": round(max_rss_mib(), 1), "rss_end_mib": round(rss_end, 1),
        "timings_s": result.timings,
        "rss_timeline": sampler.thinned(),
    }
    out.write_text(json.dumps(report))
    return report


def run_child(video: Path, audio: Path, landmarks: Path, model: str, resolution: int, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(video), str(audio), str(landmarks),
           "--model", model, "--resolution", str(resolution), "--child-out", str(out)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent)
    return json.loads(out.read_text())


# ---------------------------------------------------------------- report
def plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    seconds = [r["input_seconds"] for r in rows]
    left.plot(seconds, [r["peak_rss_hwm_mib"] for r in rows], "o-", label="peak RSS (VmHWM)")
    left.plot(seconds, [r["rss_after_load_mib"] for r in rows], "s--", label="RSS after model load")
    frame_mib = BASE_SIZE[0] * BASE_SIZE[1] * 3 / BYTES_PER_MIB
    first = rows[0]  # reference: the shortest run's peak plus every extra input frame held in RAM
    left.plot(seconds, [first["peak_rss_hwm_mib"] + (r["frames"] - first["frames"]) * frame_mib for r in rows], ":",
              color="grey", label="if every frame were held")
    left.set_xlabel("input length (s)")
    left.set_ylabel("MiB")
    left.set_ylim(bottom=0)
    left.set_title("peak RSS against input length")
    left.legend(fontsize=8)
    for r in rows:
        t, mib = zip(*r["rss_timeline"]) if r["rss_timeline"] else ((), ())
        right.plot(t, mib, label=f"{r['input_seconds']:g} s input")
    right.set_xlabel("run time (s)")
    right.set_ylabel("VmRSS (MiB)")
    right.set_ylim(bottom=0)
    right.set_title("RSS over each run")
    right.legend(fontsize=8)
    return save_figure(fig, path)


def table(rows: list[dict]) -> str:
    lines = ["| input s | frames | no-face frames | RSS after load MiB | peak RSS MiB | RSS at end MiB | wall s | frames/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input_seconds']:g} | {r['frames']} | {r['no_face_frames']} | {r['rss_after_load_mib']:.0f} | "
                     f"{r['peak_rss_hwm_mib']:.0f} | {r['rss_end_mib']:.0f} | {r['wall_s']:.0f} | {r['frames_per_s']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[60.0, 120.0, 240.0], help="input seconds")
    parser.add_argument("--model", default="tiny-random", help="tiny-random | micro-random | a model folder")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--faces", choices=FACE_MODES, default="all")
    parser.add_argument("--base-seconds", type=float, default=BASE_SECONDS, help="length of the looped clip")
    parser.add_argument("--video", type=Path, default=SHARED_MEDIA / "demo1_video.mp4")
    parser.add_argument("--audio", type=Path, default=SHARED_MEDIA / "demo1_audio.wav")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    parser.add_argument("--child", nargs=3, type=Path, metavar=("VIDEO", "AUDIO", "LANDMARKS"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def summarise(rows: list[dict], args: argparse.Namespace) -> dict:
    """The report: rows plus the peak-RSS slope per input second next to what holding every frame would cost."""
    from engine.constants import FPS

    frame_mib = BASE_SIZE[0] * BASE_SIZE[1] * 3 / BYTES_PER_MIB
    seconds = [r["input_seconds"] for r in rows]
    peaks = [r["peak_rss_hwm_mib"] for r in rows]
    fit = len(set(seconds)) > 1

    def slope(values: list[float]) -> float | None:
        return round(float(np.polyfit(seconds, values, 1)[0]), 3) if fit else None

    return {
        "machine": machine_info(args.note), "model": args.model, "resolution": args.resolution, "faces": args.faces,
        "input_size": list(BASE_SIZE), "settings": RUN_SETTINGS,
        "mib_per_input_frame": round(frame_mib, 3),
        "peak_slope_mib_per_input_s": slope(peaks),
        "end_rss_slope_mib_per_input_s": slope([r["rss_end_mib"] for r in rows]),
        "hold_all_frames_slope_mib_per_input_s": round(FPS * frame_mib, 2),
        "hold_all_frames_would_add_mib": {f"{r['input_seconds']:g}": round(r["frames"] * frame_mib, 1) for r in rows},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        return child(*args.child, args.model, args.resolution, args.child_out)
    from engine.constants import CHUNK_FRAMES, FPS
    from engine.media import load_audio

    rows: list[dict] = []
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model == "micro-random":
            from random_models import write_micro_model

            model = str(write_micro_model(work / "micro-random", resolution=args.resolution))
        frames, base_landmarks = base_clip(args.video, work, args.resolution, args.base_seconds)
        speech = load_audio(args.audio)
        for seconds in args.lengths:
            video, audio = write_long_input(frames, speech, seconds, work)
            landmarks = work / f"landmarks_{seconds:g}s.npy"
            np.save(landmarks, tiled_landmarks(base_landmarks, round(seconds * FPS), args.faces, CHUNK_FRAMES))
            row = run_child(video, audio, landmarks, model, args.resolution, work / f"result_{seconds:g}s.json")
            row["input_seconds"] = seconds
            rows.append(row)
            video.unlink()
            report = publish(summarise(rows, args), args.out, plot, table)  # after each length: a cut run keeps its rows
    return report


if __name__ == "__main__":
    main()
