"""Does the first row of `engine eval --sweep` absorb warm-up? Rows with the same work, timed with and without
the per-row warm-up.

Three settings that cost the same (one step, no guidance; only the seed differs) are swept twice on a short cut
of demo1 with tiny-random: once with `--no-warmup`, once with the default warm-up. Without warm-up the first row
pays the process's first-call costs and looks slower than identical rows after it; with it the rows agree.

Usage: python benchmarks/sweep_warmup.py [--seconds 1.0] [--out benchmarks/results/sweep_warmup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import RESULTS, SHARED_MEDIA, machine_info  # noqa: E402

BASELINE = "steps=1+guidance=1.0"
SAME_WORK = (f"{BASELINE}+seed=2", f"{BASELINE}+seed=3")


def sweep_times(video: Path, audio: Path, out: Path, warmup: bool) -> list[dict]:
    """A fresh process's state is what the first row meets: run this function first in a new process.

    Besides the sweep's own wall time per row, the CPU time of each timed run is recorded (one thread): on a
    shared machine the wall time swings with other people's load, the CPU time much less."""
    from engine.eval import sweep_runs
    from engine.eval.inputs import load_networks
    from engine.eval.report import EvalOptions
    from engine.eval.sweep import SweepOptions, run_sweep

    cpu: list[tuple[int, float]] = []  # (speech samples, CPU seconds) per run_setting call
    run_setting = sweep_runs.run_setting

    def measured(sync, setting, video, speech, faces, output, progress=None):
        start = time.process_time()
        result = run_setting(sync, setting, video, speech, faces, output, progress)
        cpu.append((speech.size, time.process_time() - start))
        return result

    sweep_runs.run_setting = measured
    options = SweepOptions(model="tiny-random", device="cpu", face="mediapipe", baseline=BASELINE,
                           settings=SAME_WORK, warmup=warmup, plot=False, eval=EvalOptions(compute_ssim=False))
    table = run_sweep(video, audio, out, load_networks(random_weights=True), options)
    full = max(size for size, _ in cpu)
    timed = [seconds for size, seconds in cpu if size == full]  # the warm-ups run a shorter speech
    return [{"name": r.setting.name, "wall_s": round(r.wall_s, 3), "cpu_s": round(c, 3), "frames": r.frames}
            for r, c in zip(table.rows, timed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the demo1 cut")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_warmup.json")
    parser.add_argument("--child", choices=["warmup", "no-warmup"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one sweep in this (fresh) process; rows as JSON on stdout
        import torch

        torch.set_num_threads(1)
        rows = sweep_times(args.work / "clip.mp4", args.work / "speech.wav", args.work / args.child,
                           args.child == "warmup")
        print(json.dumps(rows))
        return

    import subprocess

    from engine.media import cut_clip, load_audio, write_wav

    report = {"benchmark": "sweep_warmup", "command": " ".join(["python", *sys.argv]), "machine": machine_info(),
              "settings": [BASELINE, *SAME_WORK], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cut_clip(SHARED_MEDIA / "demo1_video.mp4", work / "clip.mp4", seconds=args.seconds, size=(540, 960))
        write_wav(work / "speech.wav", load_audio(SHARED_MEDIA / "demo1_audio.wav")[: int(16000 * args.seconds)])
        for mode in ("no-warmup", "warmup"):  # each in a fresh process: the first row meets a cold process
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: CPU time is not inflated by spin-waiting
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work)],
                                  capture_output=True, text=True, check=True, env=env)
            rows = json.loads(done.stdout.strip().splitlines()[-1])
            report["runs"][mode] = {"rows": rows, **{
                f"first_over_later_{kind}": round(rows[0][kind] / statistics.fmean(r[kind] for r in rows[1:]), 3)
                for kind in ("wall_s", "cpu_s")}}
    report["machine"]["loadavg_end"] = machine_info()["loadavg_1_5_15"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for mode, run in report["runs"].items():
        print(f"{mode}: " + ", ".join(f"{r['name']} {r['wall_s']} s wall, {r['cpu_s']} s CPU" for r in run["rows"])
              + f" | first row / later rows: wall {run['first_over_later_wall_s']}, "
                f"CPU {run['first_over_later_cpu_s']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
