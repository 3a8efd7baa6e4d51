"""Peak resident memory of `engine run --backend auto` after `engine export`, against `--backend torch` (issue 22).

Once `engine export` has registered ONNX files, `--backend auto` runs ONNX Runtime on the CPU. With ORT's
default session options (a CPU memory arena per session) a 3 s tiny-random job peaked at several times the
memory of eager torch. This benchmark repeats that job in a fresh engine cache:

  1. `engine export --model tiny-random` (its wall time and the number of lines it prints),
  2. `engine run --backend torch` and `engine run --backend auto` (the CLI, each a fresh process),
  3. the same job through the SDK on the exported ONNX files (`backend="onnxruntime"`, what auto ran before) with
     `EngineConfig(ort_cpu_mem_arena=True)`: the old default, for the before/after ratio within one run.

Each peak is the child's own `ru_maxrss` from os.wait4 (no sampling gaps). The commands run as argument lists.

    python benchmarks/backend_memory.py --video ../shared/media/demo1_video.mp4
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

from bench_utils import KIB_PER_MIB, RESULTS, SHARED_MEDIA, machine_info

MODEL = "tiny-random"
SDK_CHILD = """
import sys
from engine.backends.config import EngineConfig
from engine.cli.logs import configure
from engine.pipeline.sdk import LipSync
configure()
video, audio, out = sys.argv[1:4]
# explicit onnxruntime: auto itself now refuses ORT with the arena on (its memory rule)
sync = LipSync.from_pretrained("tiny-random", device="cpu", dtype="fp32", backend="onnxruntime",
                               engine=EngineConfig(ort_cpu_mem_arena=True, allow_build=False))
print(sync(video, audio, out).summary())
sync.close()
"""


def measured(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd` to completion; its wall time, exit status, peak RSS (MiB, its own ru_maxrss) and output lines."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{text[-3000:]}")
    return {"command": [Path(cmd[0]).name, *cmd[1:]], "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / KIB_PER_MIB, 1), "output_lines": len(text.splitlines())}


def make_inputs(video: Path, seconds: float, work: Path, size: tuple[int, int] | None) -> tuple[Path, Path]:
    """`seconds` of `video` (H.264, its own size unless `size`) and its speech as a 16 kHz WAV."""
    from engine.media import cut_clip, load_audio, write_wav

    clip = cut_clip(video, work / "clip.mp4", seconds=seconds, size=size).path
    speech = write_wav(work / "speech.wav", load_audio(clip))
    return Path(clip), speech


def report(rows: dict, args: argparse.Namespace) -> dict:
    torch_peak = rows["run_torch"]["peak_rss_mib"] if "run_torch" in rows else None
    ratios = {name: round(rows[key]["peak_rss_mib"] / torch_peak, 2)
              for name, key in (("auto_over_torch", "run_auto"), ("arena_on_over_torch", "sdk_auto_ort_cpu_arena_on"))
              if key in rows and torch_peak}
    return {
        "machine": machine_info(args.note), "command": [Path(sys.executable).name, *sys.argv], "model": MODEL,
        "input": {"video": args.video.name, "seconds": args.seconds, "size": args.size or "the video's own"},
        "what": "peak RSS (ru_maxrss of each child process) of one job; run_auto follows engine export (ONNX "
                "Runtime on every network); sdk_auto_ort_cpu_arena_on is the same auto job with ORT's CPU arena on, "
                "the default before issue 22",
        "rows": rows, **ratios,
    }


def write(result: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=SHARED_MEDIA / "demo1_video.mp4")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="scale the clip (default: its own size)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "backend_memory.json")
    args = parser.parse_args(argv)
    engine = [sys.executable, "-m", "engine"]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "LATENTSYNC_ENGINE_CACHE": str(work / "cache")}  # export registers here, not in ~
        video, speech = make_inputs(args.video, args.seconds, work, tuple(args.size) if args.size else None)
        rows["export"] = measured([*engine, "export", "--model", MODEL], env, work / "export.log")
        run = [*engine, "run", "--model", MODEL, "--video", str(video), "--audio", str(speech), "--no-progress"]
        for backend in ("torch", "auto"):
            rows[f"run_{backend}"] = measured([*run, "--backend", backend, "--output", str(work / f"{backend}.mp4")],
                                              env, work / f"{backend}.log")
            rows[f"run_{backend}"]["summary"] = (work / f"{backend}.log").read_text().strip().splitlines()[-1]
            write(report(rows, args), args.out)  # after each row: a cut run keeps what it measured
        rows["sdk_auto_ort_cpu_arena_on"] = measured(
            [sys.executable, "-c", SDK_CHILD, str(video), str(speech), str(work / "arena.mp4")], env, work / "arena.log")
    result = write(report(rows, args), args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return result


if __name__ == "__main__":
    main()
