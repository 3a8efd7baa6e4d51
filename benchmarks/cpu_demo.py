"""How long the README's CPU demo takes, as a newcomer runs it: a fresh cache, the `engine`
command in a subprocess, the wall time from start to exit.

Usage: python benchmarks/cpu_demo.py [--out benchmarks/results/cpu_demo.json] [--warm]
(`--warm` reuses one cache for a second run, so the first-use costs, generating tiny-random and fetching the face
models, are measured apart.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import REPO, RESULTS, machine_info  # noqa: E402
from engine.media import count_source_frames  # noqa: E402

DEMO = ["engine", "run", "--video", "examples/media/demo1_video.mp4", "--audio", "examples/media/demo1_audio.wav",
        "--output", "demo1_tiny.mp4", "--model", "tiny-random", "--steps", "2", "--guidance", "1"]


def run_demo(cache: Path, out_dir: Path) -> dict:
    """The demo command as printed, except that its output and report go to `out_dir`."""
    output, report = out_dir / "demo1_tiny.mp4", out_dir / "report.json"
    argv = [sys.executable, "-m", "engine", *DEMO[1:]]
    argv[argv.index("--output") + 1] = str(output)
    env = {**os.environ, "LATENTSYNC_ENGINE_CACHE": str(cache), "HF_HOME": str(cache / "huggingface"),
           "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run([*argv, "--report", str(report)], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    return {"wall_s": round(wall, 1), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "frames": result["num_frames"],
            "output_frames": count_source_frames(output),  # counted in the written file, not taken from the report
            "stage_seconds": {k: round(v, 1) for k, v in result["timings"].items()},
            "log": [line for line in done.stderr.splitlines() if line.strip()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_demo.json")
    parser.add_argument("--warm", action="store_true", help="also time a second run on the same cache")
    args = parser.parse_args()
    report = {"benchmark": "cpu_demo", "command": " ".join(DEMO), "machine": machine_info(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache, out_dir = Path(tmp) / "cache", Path(tmp)
        report["runs"]["fresh_cache"] = run_demo(cache, out_dir)
        if args.warm:
            report["runs"]["warm_cache"] = run_demo(cache, out_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for name, run in report["runs"].items():
        print(f"{name}: {run['wall_s']} s wall for {run['frames']} frames (load {run['loadavg_before']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
