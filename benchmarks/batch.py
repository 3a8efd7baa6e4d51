"""Batch throughput: the same jobs as a shell loop of `engine run`, as `engine batch`, and on Ray with 1 and 2 actors.

Every mode runs as its own `engine` process, so its wall time includes what a user pays: process
start, model loading (once per job for the loop, once per worker otherwise) and, on Ray, starting
a private local cluster. Reported per mode: wall seconds, start-up seconds (the batch report's
cluster start + model loading), jobs/hour and frames/s, and the ratio to the `engine run` loop
measured in the same run. Ray gives a 1-CPU actor one torch thread (OMP_NUM_THREADS=1), which on a
loaded 2-core box is itself much faster than two contending threads, so the loop and the local batch
also run with OMP_NUM_THREADS=1: compare like with like. Outputs are lossless (crf 0) and written fresh (--force) every time.

    python benchmarks/batch.py                      # tiny-random, 4 jobs of 0.32 s cuts of the demo clips
    python benchmarks/batch.py --jobs 8 --seconds 1 --model latentsync-1.6 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_utils import RESULTS, SHARED_MEDIA, machine_info

SETTINGS = ["--steps", "1", "--guidance", "1", "--deepcache", "0", "--seed", "7", "--crf", "0"]


def make_jobs(root: Path, jobs: int, seconds: float) -> list[dict]:
    """`jobs` manifest rows over the two demo clips crossed with their speech (cut to `seconds`)."""
    from engine.media import cut_clip, load_audio, write_wav

    cuts = {}
    for name in ("demo1", "demo2"):
        video, wav = root / f"{name}.mp4", root / f"{name}.wav"
        cut_clip(SHARED_MEDIA / f"{name}_video.mp4", video, seconds=seconds, size=(360, 640))
        write_wav(wav, load_audio(SHARED_MEDIA / f"{name}_audio.wav")[: round(seconds * 16000)], 16000)
        cuts[name] = (video, wav)
    pairs = [("demo1", "demo1"), ("demo2", "demo2"), ("demo1", "demo2"), ("demo2", "demo1")]
    return [{"video": str(cuts[v][0]), "audio": str(cuts[a][1]), "seed": 7 + i}
            for i, (v, a) in enumerate(pairs[k % 4] for k in range(jobs))]


def _engine(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"engine {' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def run_loop(rows: list[dict], out: Path, model_args: list[str], env: dict) -> dict:
    """One `engine run` process per job, one after another (the shell loop users write today)."""
    out.mkdir(parents=True, exist_ok=True)
    wall = 0.0
    for i, row in enumerate(rows):
        seed = ["--seed", str(row["seed"])]
        wall += _engine(["run", "--video", row["video"], "--audio", row["audio"], "--output", str(out / f"{i}.mp4"),
                         *model_args, *SETTINGS[:-4], *seed, "--crf", "0", "--no-progress"], env)
    return {"wall_seconds": wall, "startup_seconds": None}


def run_batch(rows: list[dict], out: Path, model_args: list[str], env: dict, extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "jobs.jsonl"
    manifest.write_text("".join(json.dumps({**row, "output": f"{i}.mp4"}) + "\n" for i, row in enumerate(rows)))
    wall = _engine(["batch", str(manifest), *model_args, *SETTINGS, "--force", "--no-progress", *extra], env)
    report = json.loads((out / "jobs.jsonl.report.json").read_text())
    assert report["counts"]["done"] == len(rows), report["counts"]
    return {"wall_seconds": wall, "startup_seconds": report["startup_seconds"], "workers": report["workers"],
            "inner_wall_seconds": report["wall_seconds"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--face", default="mediapipe")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--seconds", type=float, default=0.32, help="length of each job's clip and speech")
    p.add_argument("--modes", default="loop,loop_t1,local,local_t1,ray1,ray2", help="comma-separated subset")
    p.add_argument("--work", help="folder for inputs and outputs (default: a temporary one)")
    p.add_argument("--out", default=str(RESULTS / "batch.json"))
    args = p.parse_args(argv)

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = make_jobs(work, args.jobs, args.seconds)
    model_args = ["--model", args.model, "--device", args.device, "--face", args.face]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    frames_per_job = round(args.seconds * 25) + 2
    one_thread = {**env, "OMP_NUM_THREADS": "1"}  # what Ray gives a 1-CPU actor
    modes = {
        "loop": ("engine run, one process per job", lambda: run_loop(rows, work / "loop", model_args, env)),
        "loop_t1": ("engine run loop, OMP_NUM_THREADS=1",
                    lambda: run_loop(rows, work / "loop_t1", model_args, one_thread)),
        "local": ("engine batch (one process)", lambda: run_batch(rows, work / "local", model_args, env, [])),
        "local_t1": ("engine batch, OMP_NUM_THREADS=1",
                     lambda: run_batch(rows, work / "local_t1", model_args, one_thread, [])),
        "ray1": ("engine batch --ray local --workers 1",
                 lambda: run_batch(rows, work / "ray1", model_args, env, ["--ray", "local", "--workers", "1"])),
        "ray2": ("engine batch --ray local --workers 2",
                 lambda: run_batch(rows, work / "ray2", model_args, env, ["--ray", "local", "--workers", "2"])),
    }
    load_before = os.getloadavg()
    results = []
    for key in args.modes.split(","):
        label, run = modes[key]
        print(f"{label} ...", flush=True)
        row = {"mode": key, "label": label, **run()}
        wall = row["wall_seconds"]
        row["jobs_per_hour"] = round(3600 * args.jobs / wall, 2)
        row["frames_per_second"] = round(args.jobs * frames_per_job / wall, 4)
        row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results.append(row)
    loop = next((r for r in results if r["mode"] == "loop"), None)
    for row in results:
        row["speedup_vs_loop"] = round(loop["wall_seconds"] / row["wall_seconds"], 3) if loop else None
    import ray

    report = {
        "benchmark": "batch", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {**machine_info("2-core CPU shared with other jobs; see loadavg"),
                    "loadavg_before": [round(x, 2) for x in load_before]},
        "versions": {"ray": ray.__version__}, "model": args.model, "device": args.device, "jobs": args.jobs,
        "seconds_per_job": args.seconds, "frames_per_job": frames_per_job, "settings": SETTINGS, "rows": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    return report


def table(rows: list[dict]) -> str:
    lines = ["| mode | wall s | start-up s | jobs/hour | frames/s | vs engine run loop |", "|---|---|---|---|---|---|"]
    for r in rows:
        startup = "-" if r["startup_seconds"] is None else f"{r['startup_seconds']:.1f}"
        lines.append(f"| {r['label']} | {r['wall_seconds']:.1f} | {startup} | {r['jobs_per_hour']:.0f} | "
                     f"{r['frames_per_second']:.2f} | {r['speedup_vs_loop']}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
