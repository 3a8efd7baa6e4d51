"""Every GPU number this project claims, from one command on one H100/H200, in under 8 minutes, offline.

Steps, in this order, each with its own time budget and each in its own process (a crash, hang or timeout
ends that step only; what it measured so far is already on disk):

  1. tests      every requires_cuda test (and requires_trt where TensorRT exists): pass / fail / skip
  2. unet       official U-Net at 256 and 512, 16 frames, CFG batch 2: full and shallow passes, fp16 and bf16,
                eager vs torch.compile vs ONNX Runtime CUDA (vs TensorRT): ms/call, TFLOP/s, deviation from fp32
  3. vae        encode / decode per frame at 256 and 512, fp16 / bf16 (overflow?), channels_last, cudnn.benchmark, TF32
  4. pipeline   the demo clip at 1080p, reference and fast, 256 and 512: frames/s, stage shares, GPU idle
                fraction, peak GPU memory; eager-serial (official-equivalent) against the optimized path
  5. streaming  first-frame latency and steady frame interval of a live session; benchmarks/throughput.py

Everything goes to --out (default benchmarks/results/gpu/): gpu_check.json (rewritten after every case),
gpu_check.md, gpu_check.log, unet.png, vae.png, pipeline.png and throughput.json: seven files, one folder.

    python benchmarks/gpu_check.py --prepare                         # once, where ../shared/media exists
    python benchmarks/gpu_check.py                                   # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/g  # plumbing smoke test on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DEFAULT_OUT = BENCHMARKS / "results" / "gpu"
DEFAULT_MEDIA = BENCHMARKS / "media"  # git-ignored; filled by --prepare, carried to a lent GPU machine
SHARED_MEDIA = REPO.parent / "shared" / "media"
RESULT_FILE = "gpu_check.json"
FORMAT = 1
# (name, seconds): 450 s of budgets plus process starts stays under 8 minutes. The tests step holds a tiny
# torch.compile (a minute of inductor work); the U-Net step compiles the official U-Net only while time is left.
STEPS = (("tests", 110), ("unet", 150), ("vae", 35), ("pipeline", 100), ("streaming", 55))
QUICK_STEPS = {name: 60 for name, _ in STEPS}
GRACE_S = 20  # a step's process is killed this long after its budget
WHEELS = ("diffusers", "av")  # what the lent machine's image lacks (KINDS.md's package list; see README)


# ---------------------------------------------------------------------------------------------- result file
def _load(out: Path) -> dict[str, Any]:
    return json.loads((out / RESULT_FILE).read_text())


def _save(out: Path, report: dict[str, Any]) -> None:
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, out / RESULT_FILE)


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    for module in ("onnxruntime", "tensorrt", "triton", "diffusers", "av"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # missing optional runtimes are part of the record
            info[module] = f"not available ({type(exc).__name__})"
    return info


def new_report(args: argparse.Namespace, budgets: dict[str, float]) -> dict[str, Any]:
    return {
        "benchmark": "gpu_check", "format": FORMAT, "command": [sys.executable, *sys.argv],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device, "quick": args.quick,
        "machine": machine_info(),
        "reference": {"unet_tflop_full_16_frames_512": 17.63, "unet_tflop_full_16_frames_256": 4.05,
                      "peak_dense_bf16_tflops": 790.0,
                      "note": "TFLOP per full forward of one 16-frame clip (CFG batch 2 is twice that); the peak is "
                              "an 8192^3 bf16 product measured on an H200 of this workplace"},
        "steps": [{"name": name, "status": "pending", "budget_s": budgets[name], "seconds": None, "reason": None}
                  for name, _ in STEPS if name in budgets],
        "results": {name: {"rows": []} for name in budgets},
    }


def append_row(out: Path, step: str, row: dict[str, Any]) -> None:
    """Add one measured row to `step` and rewrite the file (read-modify-write: one step process at a time)."""
    report = _load(out)
    report["results"].setdefault(step, {"rows": []})["rows"].append(row)
    _save(out, report)
    print(json.dumps({"step": step, **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}}), flush=True)


def set_step(out: Path, name: str, **fields: Any) -> None:
    report = _load(out)
    next(s for s in report["steps"] if s["name"] == name).update(fields)
    _save(out, report)


# ---------------------------------------------------------------------------------------------- steps
def run_step(args: argparse.Namespace) -> int:
    """The body of one step (`--step NAME`), in its own process."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_measure as m

    out = Path(args.out)
    plan = m.Plan.for_run(args.device, args.quick)
    budget = m.Budget(args.budget_s)

    def emit(row: dict[str, Any]) -> None:
        append_row(out, args.step, row)

    if args.step == "tests":
        run_tests(args, budget, emit)
    elif args.step == "unet":
        m.measure_unet(plan, budget, emit, build_trt=args.build_trt)
    elif args.step == "vae":
        m.measure_vae(plan, budget, emit)
    elif args.step == "pipeline":
        m.measure_pipeline(plan, budget, emit, media=Path(args.media), seconds=args.seconds,
                           optimized_backend=args.optimized_backend)
    elif args.step == "streaming":
        m.measure_streaming(plan, budget, emit, media=Path(args.media), seconds=args.seconds, out_dir=out)
    return 0


def gpu_test_files() -> list[str]:
    """Test files with a requires_cuda / requires_trt test (collecting only these keeps the step short)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "requires_cuda" in (text := p.read_text(encoding="utf-8")) or "requires_trt" in text)


def run_tests(args: argparse.Namespace, budget, emit) -> None:  # noqa: ANN001
    """pytest on the marked tests; one row per test as it finishes (a plugin streams them), then a summary."""
    files = ["tests/test_gpu_backends.py"] if args.quick else gpu_test_files()
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "tests.jsonl"
        env = {**os.environ, "GPU_CHECK_TESTS_JSONL": str(stream), "PYTHONPATH": os.pathsep.join(
            [str(BENCHMARKS), str(REPO), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_pytest_plugin",
                   "-m", "requires_cuda or requires_trt", *files]
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=max(budget.left() - 5, 10))
            returncode, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
        except subprocess.TimeoutExpired as exc:
            returncode, tail = None, f"pytest timed out after {exc.timeout:.0f} s"
        rows = [json.loads(line) for line in stream.read_text().splitlines()] if stream.exists() else []
    for row in rows:
        emit({"kind": "test", **row})
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    emit({"kind": "summary", "files": files, "command": command, "returncode": returncode, "counts": counts,
          "seconds": round(time.monotonic() - started, 1), "output_tail": tail})


def run_all(args: argparse.Namespace) -> int:
    """Each step in its own process, in order, with its budget; the report is rendered after every step."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [name for name, _ in STEPS if not args.steps or name in args.steps]
    scale = args.budget_scale
    budgets = {name: (QUICK_STEPS[name] if args.quick else seconds) * scale for name, seconds in STEPS if name in chosen}
    _save(out, new_report(args, budgets))
    log = out / "gpu_check.log"
    log.write_text("")
    for name in chosen:
        set_step(out, name, status="running")
        command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--budget-s", str(budgets[name]),
                   "--out", str(out), "--device", args.device, "--media", str(args.media), "--seconds", str(args.seconds),
                   "--optimized-backend", args.optimized_backend] + (["--quick"] if args.quick else []) \
            + (["--build-trt"] if args.build_trt else [])
        started = time.monotonic()
        status, reason = "ok", None
        with open(log, "a") as handle:
            handle.write(f"===== step {name} (budget {budgets[name]:.0f} s)\n")
            handle.flush()
            if args.in_process:  # one process for every step (the CPU smoke test: imports once)
                status, reason = _step_in_process(command[2:], handle)
            else:
                try:
                    done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                          timeout=budgets[name] + GRACE_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                    if done.returncode != 0:
                        status, reason = "failed", f"exit code {done.returncode} (see gpu_check.log)"
                except subprocess.TimeoutExpired:
                    status, reason = "timeout", f"killed after {budgets[name] + GRACE_S:.0f} s; rows measured before stay"
        rows = _load(out)["results"].get(name, {}).get("rows", [])
        problem = rows_problem(rows)
        if status == "ok" and rows and all("skipped" in r for r in rows):
            status, reason = "skipped", rows[0]["skipped"]
        elif status == "ok" and problem:  # the step's process exited 0, but what it ran did not finish well
            status, reason = problem
        elif status == "ok" and any("error" in r for r in rows):
            reason = "some cases failed: see their 'error'"
        set_step(out, name, status=status, reason=reason, seconds=round(time.monotonic() - started, 1))
        render(out)
        print(f"step {name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    report = _load(out)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _save(out, report)
    render(out)
    print((out / "gpu_check.md").read_text())
    return 0


def rows_problem(rows: list[dict]) -> tuple[str, str] | None:
    """(status, reason) when a step's rows show it did not run to the end: pytest missing, failing or timed out
    (the tests step's summary row), or a measurement that timed out; None otherwise."""
    for row in rows:
        if row.get("kind") == "summary" and row.get("returncode") != 0:
            tail = str(row.get("output_tail") or "")
            if row.get("returncode") is None:
                return "timeout", tail.splitlines()[-1] if tail else "pytest timed out"
            if "No module named pytest" in tail:
                return "failed", "pytest is not installed (pip install -e \".[dev]\")"
            return "failed", f"pytest exit code {row.get('returncode')} (see the test rows)"
        if "timed out" in str(row.get("error", "")):
            return "timeout", str(row["error"])[:300]
    return None


def _step_in_process(argv: list[str], log) -> tuple[str, str | None]:  # noqa: ANN001
    """Run one step here (no timeout: for the smoke test); a raised error fails only that step."""
    import contextlib
    import traceback

    try:
        with contextlib.redirect_stdout(log):
            run_step(parse_args(argv))
    except Exception as exc:
        log.write(traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}"[:300]
    return "ok", None


# ---------------------------------------------------------------------------------------------- report
def render(out: Path) -> None:
    """gpu_check.md and the plots from gpu_check.json (never fails the run: a bad plot is noted in the md)."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_report

    report = _load(out)
    notes = gpu_report.plots(report, out)
    (out / "gpu_check.md").write_text(gpu_report.markdown(report, notes))


# ---------------------------------------------------------------------------------------------- prepare
def prepare(args: argparse.Namespace) -> int:
    """Copy the demo clip into the (git-ignored) media folder with a face track, and say how to carry wheels."""
    media = Path(args.media)
    media.mkdir(parents=True, exist_ok=True)
    for name in ("demo1_video.mp4", "demo1_audio.wav"):
        source = SHARED_MEDIA / name
        if not source.exists():
            print(f"error: {source} not found (run from a checkout beside ../shared)", file=sys.stderr)
            return 2
        shutil.copyfile(source, media / name)  # not copy2: the shared files are read-only
    track = media / "demo1_face_track.json"
    if not track.exists() or args.force:
        write_face_track(media / "demo1_video.mp4", track, face=args.face)
    print(f"media ready in {media} (git-ignored: carry it to the GPU machine)")
    print("for a lent GPU machine, fetch the wheels its image lacks (diffusers, PyAV) here:")
    print("  " + " ".join(wheel_command()))
    return 0


def wheel_command() -> list[str]:
    """`pip download` of WHEELS at this environment's versions, as cp312 manylinux wheels, into .whl/."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return name

    return ["python", "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "-d", ".whl", *(pinned(n) for n in WHEELS)]


def write_face_track(video: Path, out: Path, *, face: str = "mediapipe") -> None:
    """Three alignment points per frame of `video` (the offline detector), as a compact track file."""
    from engine.face.detection import FaceTracker, make_face_source
    from engine.media import iter_video_frames

    tracker = FaceTracker(make_face_source(face))
    points, size = [], None
    for index, frame in enumerate(iter_video_frames(video, fps=25)):
        size = size or [int(frame.rgb.shape[1]), int(frame.rgb.shape[0])]
        observation = tracker.update(index, frame.rgb)
        points.append(None if observation is None else [[round(float(v), 2) for v in p] for p in observation.landmarks3])
    out.write_text(json.dumps({"format": "latentsync-face-track", "version": 1, "frame_size": size,
                               "landmarks3": points}) + "\n")
    print(f"wrote {out}: {len(points)} frames, {sum(p is None for p in points)} without a face")


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="result folder (e.g. $OUT on a lent machine)")
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (only with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one iteration: proves the plumbing (CPU, seconds)")
    p.add_argument("--steps", nargs="+", choices=[name for name, _ in STEPS], help="run only these steps")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's time budget")
    p.add_argument("--media", default=str(DEFAULT_MEDIA), help="folder with demo1_video.mp4, demo1_audio.wav and "
                                                               "demo1_face_track.json (see --prepare)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of the demo clip the pipeline and stream use")
    p.add_argument("--optimized-backend", default="torch", choices=["torch", "compile", "onnxruntime", "tensorrt"],
                   help="backend of the optimized pipeline variant (compile costs minutes of warm-up per shape)")
    p.add_argument("--build-trt", action="store_true", help="build official-size TensorRT engines (needs minutes)")
    p.add_argument("--in-process", action="store_true",
                   help="run the steps in this process, without their timeouts (the CPU smoke test)")
    p.add_argument("--prepare", action="store_true", help="copy the demo clip into --media with a face track")
    p.add_argument("--face", default="mediapipe", help="detector for --prepare's face track")
    p.add_argument("--force", action="store_true", help="--prepare: recompute the face track")
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    p.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device.startswith("cpu") and not (args.quick or args.prepare):
        p.error("--device cpu needs --quick (the real sizes need a GPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(args)
    if args.step:
        return run_step(args)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda: expected a CUDA GPU, found none (torch.cuda.is_available() is False); "
                  "`--device cpu --quick` runs the plumbing without one", file=sys.stderr)
            return 7
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
