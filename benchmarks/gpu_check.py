"""Every GPU number this project claims, from one command on one H100/H200, offline, planned to end within 420 s.

Steps, in this order, each with its own time budget and each in its own process group (a crash, hang or timeout
ends that step only, and kills everything the step started; what it measured so far is already on disk):

  1. tests      every requires_cuda test (and requires_trt where TensorRT exists): pass / fail / skip
  2. calibrate  ms per network call (U-Net full / shallow, VAE encoder / decoder, audio encoder) at the engine's
                shapes next to the modelled device's prediction for the same FLOPs: writes calibration.json
  3. profile    torch.profiler over one reference chunk at 512 and one fast chunk on the optimized path: top
                kernels by device time, op families, device idle gaps between stages
  4. unet       official U-Net at 256 and 512, 16 frames, CFG batch 2: full and shallow passes, fp16 and bf16,
                eager vs ONNX Runtime CUDA vs torch.compile (vs TensorRT): ms/call, TFLOP/s, deviation from fp32
  5. vae        encode / decode per frame at 256 and 512, fp16 / bf16 (overflow?), channels_last, cudnn.benchmark, TF32
  6. pipeline   the demo clip at 1080p, reference and fast, 256 and 512: frames/s, stage shares, GPU idle
                fraction, peak GPU memory; eager-serial (official-equivalent) against the optimized path
  7. streaming  first-frame latency and steady frame interval of a live session; benchmarks/throughput.py
  8. system     benchmarks/system.py --quick (the whole-system benchmark), when the checkout has it
  9. video_io   NVDEC decode and NVENC encode frames/s (the [gpu-video] extra) against PyAV decode and x264
                veryfast / medium, and one tiny-random job with --video-io gpu against cpu (benchmarks/gpu_video_io.py)

Results go to --out (default benchmarks/results/gpu/), at most six files, directly in that folder:
gpu_check.jsonl (every row as soon as it exists: skip reasons first, then measurements, then step ends),
gpu_check.json (the same, as one report, rewritten after every step), gpu_check.md, gpu_check.log,
gpu_check.png and calibration.json. `--print-budget` prints the planned seconds; `--only STEP` re-runs one step.

    python benchmarks/gpu_check.py --prepare                         # once, where ../shared exists
    python benchmarks/gpu_check.py                                   # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/g  # plumbing smoke test on a CPU

On a GPU machine with no network access whose Python lacks PyAV and diffusers, run `benchmarks/gpu_remote.sh`
(docs/gpu-check.md gives the exact procedure; tests/test_gpu_check.py rehearses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
DEFAULT_OUT = BENCHMARKS / "results" / "gpu"
DEFAULT_MEDIA = BENCHMARKS / "media"  # git-ignored; filled by --prepare, carried to the GPU machine
SHARED_ENV = "LATENTSYNC_SHARED"  # the one setting for the shared fixtures (tests/conftest.py reads it too)
RESULT_FILE, ROWS_FILE, MD_FILE, LOG_FILE, PLOT_FILE = (
    "gpu_check.json", "gpu_check.jsonl", "gpu_check.md", "gpu_check.log", "gpu_check.png")
CALIBRATION_FILE = "calibration.json"
RESULT_FILES = (RESULT_FILE, ROWS_FILE, MD_FILE, LOG_FILE, PLOT_FILE, CALIBRATION_FILE)  # all a run writes to --out
MAX_RESULT_FILES, MAX_FILE_BYTES = 6, 16 * 2**20  # what one remote call returns
LOG_KEEP_BYTES = 12 * 2**20  # the log is cut in the middle beyond this
FORMAT = 2
TOTAL_LIMIT_S = 420.0  # a default run, wheel install included: leaves a second, targeted call in one GPU hour
# (name, seconds). Each budget is the step's own plan (cases that would not fit are skipped with a reason);
# a step is killed GRACE_S after it. test_gpu_check checks sum(budget + grace) + STARTUP_ALLOWANCE_S <= 420.
STEPS = (("tests", 55), ("calibrate", 30), ("profile", 40), ("unet", 50), ("vae", 25), ("pipeline", 45),
         ("streaming", 60), ("system", 25), ("video_io", 15))
STEP_NAMES = tuple(name for name, _ in STEPS)
QUICK_BUDGET_S = 240.0  # tiny models, but a loaded 2-core machine imports torch slowly (no plan: plumbing)
GRACE_S = 5.0
STARTUP_ALLOWANCE_S = 30.0  # wheel install (~10 s), this process's imports, the final report
FINAL_RESERVE_S = 8.0  # kept back from the last step for the final report
STARTED_AT_ENV = "GPU_CHECK_STARTED_AT"  # unix time the remote command began (gpu_remote.sh sets it)
WHEELS = ("diffusers", "av")  # what the GPU machine's Python lacks (see docs/gpu-check.md)
GPU_VIDEO_WHEELS = ("torchcodec", "pynvvideocodec")  # the [gpu-video] extra, for the video_io step (optional)


# ---------------------------------------------------------------------------------------------- budget
def planned_budget(steps: list[str] | None = None, *, quick: bool = False, scale: float = 1.0) -> dict[str, Any]:
    """Seconds per chosen step (budget, kill limit) and the planned total with the start-up allowance."""
    chosen = [n for n in STEP_NAMES if not steps or n in steps]
    rows = []
    for name, seconds in STEPS:
        if name in chosen:
            budget = (QUICK_BUDGET_S if quick else seconds) * scale
            rows.append({"step": name, "budget_s": budget, "kill_after_s": budget + GRACE_S})
    total = sum(r["kill_after_s"] for r in rows) + STARTUP_ALLOWANCE_S
    return {"steps": rows, "grace_s": GRACE_S, "startup_allowance_s": STARTUP_ALLOWANCE_S,
            "total_s": round(total, 1), "limit_s": TOTAL_LIMIT_S}


def print_budget(args: argparse.Namespace) -> int:
    plan = planned_budget(args.steps, quick=args.quick, scale=args.budget_scale)
    print(f"{'step':<12}{'budget s':>10}{'killed after s':>16}")
    for row in plan["steps"]:
        print(f"{row['step']:<12}{row['budget_s']:>10.0f}{row['kill_after_s']:>16.0f}")
    print(f"{'start-up':<12}{plan['startup_allowance_s']:>10.0f}   (wheel install, imports, final report)")
    print(f"planned total: {plan['total_s']:.0f} s (limit {args.total_s:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------- result files
def write_atomically(path: Path, data: str | bytes) -> None:
    """Replace `path` whole. The temporary file lives outside the result folder (a kill can never leave an
    extra file there); where that folder is on another file system the file is written in place."""
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f"gpu-check-{path.name}-")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it (mkstemp makes it private)
        os.replace(tmp, path)
    except OSError:  # EXDEV: another file system
        Path(tmp).unlink(missing_ok=True)
        with open(path, mode) as handle:
            handle.write(data)


def append_record(out: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in one write (steps run one at a time; a kill loses at most this line)."""
    line = json.dumps(record, default=str) + "\n"
    with open(out / ROWS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)


def append_row(out: Path, step: str, row: dict[str, Any]) -> None:
    append_record(out, {"step": step, **row})
    print(json.dumps({"step": step, **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}},
                     default=str), flush=True)


def read_report(out: Path) -> dict[str, Any]:
    """gpu_check.jsonl -> the report (a line cut short by a kill is skipped)."""
    report: dict[str, Any] = {"steps": [], "results": {}}
    for line in (out / ROWS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        event = record.pop("event", None)
        if event == "start":
            report.update(record)
            report["results"] = {s["name"]: {"rows": []} for s in record["steps"]}
        elif event == "step":
            next(s for s in report["steps"] if s["name"] == record["name"]).update(record)
        elif event == "finish":
            report.update(record)
        else:
            step = record.pop("step", "unknown")
            report["results"].setdefault(step, {"rows": []})["rows"].append(record)
    return report


def write_report(out: Path) -> dict[str, Any]:
    """gpu_check.json, gpu_check.md and gpu_check.png from the rows. Never raises: a report that cannot be
    drawn is noted in the log and the run goes on (the rows in gpu_check.jsonl are the record)."""
    sys.path.insert(0, str(BENCHMARKS))
    report = read_report(out)
    write_atomically(out / RESULT_FILE, json.dumps(report, indent=1, default=str) + "\n")
    try:
        import gpu_report

        notes = gpu_report.plots(report, out / PLOT_FILE)
        write_atomically(out / MD_FILE, gpu_report.markdown(report, notes))
    except Exception as exc:  # noqa: BLE001
        import traceback

        with open(out / LOG_FILE, "a") as handle:
            handle.write(f"report: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    return report


def cap_log(path: Path, keep: int = LOG_KEEP_BYTES) -> None:
    """Keep the log under the per-file limit: its head and its tail, with a marker between."""
    if not path.exists() or path.stat().st_size <= keep:
        return
    data = path.read_bytes()
    head, tail = data[: keep // 4], data[-(keep - keep // 4) + 200:]
    write_atomically(path, head + f"\n... [{len(data) - len(head) - len(tail)} bytes cut] ...\n".encode() + tail)


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
    for module in ("onnxruntime", "tensorrt", "triton", "diffusers", "av", "pynvml"):
        try:
            info[module] = getattr(__import__(module), "__version__", "installed")
        except Exception as exc:  # missing optional runtimes are part of the record
            info[module] = f"not available ({type(exc).__name__})"
    return info


def start_record(args: argparse.Namespace, budgets: dict[str, float]) -> dict[str, Any]:
    return {
        "event": "start", "benchmark": "gpu_check", "format": FORMAT, "command": [sys.executable, *sys.argv],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device, "quick": args.quick,
        "machine": machine_info(), "budget": planned_budget(list(budgets), quick=args.quick, scale=args.budget_scale),
        "reference": {"unet_tflop_full_16_frames_512": 17.63, "unet_tflop_full_16_frames_256": 4.05,
                      "peak_dense_bf16_tflops": 790.0,
                      "note": "TFLOP per full forward of one 16-frame clip (CFG batch 2 is twice that); the peak is "
                              "an 8192^3 bf16 product measured on an H200 (141 GB, SXM)"},
        "steps": [{"name": name, "status": "pending", "budget_s": budgets[name], "seconds": None, "reason": None}
                  for name in STEP_NAMES if name in budgets],
    }


# ---------------------------------------------------------------------------------------------- golden fixtures
def shared_folder() -> Path:
    """The shared fixtures folder: $LATENTSYNC_SHARED, else ../shared (as tests/conftest.py)."""
    return Path(os.environ.get(SHARED_ENV) or REPO.parent / "shared")


def golden_for_tests(media: Path, scratch: Path) -> tuple[Path | None, str]:
    """(a LATENTSYNC_SHARED value whose golden/ the CUDA tests can read, how it was found)."""
    import golden_subset

    shared = shared_folder()
    if (shared / "golden").is_dir():
        return shared, f"{SHARED_ENV}: {shared}"
    archive = media / golden_subset.ARCHIVE
    if archive.is_file():
        golden_subset.extract(archive, scratch)
        return scratch, f"the subset {archive.relative_to(REPO) if archive.is_relative_to(REPO) else archive}"
    return None, (f"no golden fixtures: {shared}/golden is absent and {archive} was not prepared "
                  "(python benchmarks/gpu_check.py --prepare); the CUDA tests that need them skip")


# ---------------------------------------------------------------------------------------------- steps
def run_step(args: argparse.Namespace) -> int:
    """The body of one step (`--step NAME`), in its own process."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_measure as m

    out = Path(args.out)
    plan = m.Plan.for_run(args.device, args.quick)
    seconds = args.budget_s if args.deadline_unix is None else args.deadline_unix - time.time()
    budget = m.Budget(seconds)  # imports are already paid for out of the deadline

    def emit(row: dict[str, Any]) -> None:
        append_row(out, args.step, row)

    if args.step == "tests":
        run_tests(args, budget, emit)
    elif args.step == "calibrate":
        import gpu_calibrate

        gpu_calibrate.measure_calibration(plan, budget, emit, out / CALIBRATION_FILE)
    elif args.step == "profile":
        import gpu_profile

        gpu_profile.measure_profile(plan, budget, emit, media=Path(args.media))
    elif args.step == "unet":
        m.measure_unet(plan, budget, emit, build_trt=args.build_trt)
    elif args.step == "vae":
        m.measure_vae(plan, budget, emit)
    elif args.step == "pipeline":
        m.measure_pipeline(plan, budget, emit, media=Path(args.media), seconds=args.seconds,
                           optimized_backend=args.optimized_backend)
    elif args.step == "streaming":
        m.measure_streaming(plan, budget, emit, media=Path(args.media), seconds=args.seconds)
    elif args.step == "system":
        m.measure_system(plan, budget, emit)
    elif args.step == "video_io":
        import gpu_video_io

        gpu_video_io.measure_video_io(plan, budget, emit, media=Path(args.media))
    return 0


def gpu_test_files() -> list[str]:
    """Test files with a requires_cuda / requires_trt test (collecting only these keeps the step short)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "requires_cuda" in (text := p.read_text(encoding="utf-8")) or "requires_trt" in text)


def run_tests(args: argparse.Namespace, budget, emit) -> None:  # noqa: ANN001
    """pytest on the marked tests; one row per test as it finishes (a plugin streams them), then a summary."""
    from process_tree import run_killable

    files = ["tests/test_gpu_backends.py"] if args.quick else gpu_test_files()
    with tempfile.TemporaryDirectory(prefix="gpu-check-tests-") as tmp:
        shared, found = golden_for_tests(Path(args.media), Path(tmp) / "shared")
        emit({"kind": "golden", "found": shared is not None, "source": found})
        output = Path(tmp) / "pytest.out"
        # the plugin appends one row per test to the result rows themselves: a kill keeps every finished test
        env = {**os.environ, "GPU_CHECK_TESTS_JSONL": str(Path(args.out) / ROWS_FILE), "GPU_CHECK_TESTS_STEP": "tests",
               "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), str(REPO), os.environ.get("PYTHONPATH", "")])}
        if shared is not None:
            env[SHARED_ENV] = str(shared)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_pytest_plugin",
                   "-m", "requires_cuda or requires_trt", *files]
        started = time.monotonic()
        with open(output, "w") as handle:
            returncode, timed_out = run_killable(command, max(budget.left() - 3, 5), cwd=REPO, env=env,
                                                 stdout=handle, stderr=subprocess.STDOUT)
        tail = output.read_text(errors="replace")[-3000:]
        if timed_out:
            tail += f"\npytest killed after {time.monotonic() - started:.0f} s (the step's budget)"
    rows = [r for r in read_report(Path(args.out))["results"].get("tests", {}).get("rows", []) if r.get("kind") == "test"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    emit({"kind": "summary", "files": files, "command": command, "returncode": returncode, "timed_out": timed_out,
          "counts": counts, "seconds": round(time.monotonic() - started, 1), "output_tail": tail})


def preflight(args: argparse.Namespace, chosen: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """What is known to be skipped before anything runs: written first, so a later kill cannot lose it."""
    sys.path.insert(0, str(BENCHMARKS))
    import gpu_measure as m

    plan = m.Plan.for_run(args.device, args.quick)
    rows: list[tuple[str, dict[str, Any]]] = []
    if "unet" in chosen:
        for mode in ("compile", "onnxruntime", "tensorrt"):
            for dtype in plan.dtypes:
                reason = m.unet_mode_unavailable(mode, plan, args.device, dtype, args.build_trt)
                if reason:
                    rows.append(("unet", {"kind": "preflight", "mode": mode, "dtype": dtype, "note": reason}))
    if "tests" in chosen:
        shared = shared_folder()
        import golden_subset

        archive = Path(args.media) / golden_subset.ARCHIVE
        if not (shared / "golden").is_dir() and not archive.is_file():
            rows.append(("tests", {"kind": "preflight", "note": f"no golden fixtures ({shared}/golden, {archive}): "
                                                                "the CUDA tests that read them skip"}))
    if not args.quick:
        missing = [n for n in m.DEMO_FILES if not (Path(args.media) / n).exists()]
        for step in ("profile", "pipeline", "streaming"):
            if step in chosen and missing:
                rows.append((step, {"kind": "preflight", "note": f"{', '.join(missing)} not in {args.media}: run "
                                                                 "`python benchmarks/gpu_check.py --prepare` beside ../shared"}))
    if "video_io" in chosen:
        from engine.extras import missing_modules

        missing = missing_modules("gpu-video")
        if missing:
            rows.append(("video_io", {"kind": "preflight", "note": f"{', '.join(missing)} not installed: the NVDEC / "
                                      "NVENC rows skip (carry the [gpu-video] wheels that --prepare prints)"}))
    if "system" in chosen and not m.SYSTEM_SCRIPT.exists():
        rows.append(("system", {"kind": "preflight", "note": f"{m.SYSTEM_SCRIPT.relative_to(REPO)} is not in this checkout"}))
    return rows


_CURRENT_STEP: list[int] = []  # pid of the running step process (killed with its tree on SIGTERM)


def _on_sigterm(signum, frame) -> None:  # noqa: ANN001
    from process_tree import kill_tree

    for pid in _CURRENT_STEP:
        kill_tree(pid, grace_s=1.0)
    raise SystemExit(128 + signum)


def run_all(args: argparse.Namespace) -> int:
    """Each step in its own process group, in order, within its budget and the total limit."""
    sys.path.insert(0, str(BENCHMARKS))
    from process_tree import run_killable

    started_at = float(os.environ.get(STARTED_AT_ENV) or time.time())
    plan = planned_budget(args.steps, quick=args.quick, scale=args.budget_scale)
    total_s = args.total_s if not args.quick else max(args.total_s, plan["total_s"])  # --quick: plumbing, no limit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in STEP_NAMES if not args.steps or name in args.steps]
    budgets = {r["step"]: r["budget_s"] for r in planned_budget(chosen, quick=args.quick, scale=args.budget_scale)["steps"]}
    (out / ROWS_FILE).write_text("")
    (out / LOG_FILE).write_text("")
    append_record(out, start_record(args, budgets))
    for step, row in preflight(args, chosen):
        append_row(out, step, row)
    signal.signal(signal.SIGTERM, _on_sigterm)
    for name in chosen:
        left = total_s - FINAL_RESERVE_S - (time.time() - started_at)
        kill_after = min(budgets[name] + GRACE_S, left)
        started = time.monotonic()
        if kill_after < 10:
            append_record(out, {"event": "step", "name": name, "status": "skipped", "seconds": 0.0,
                                "reason": f"total limit: {max(left, 0):.0f} s of {total_s:.0f} s left"})
            continue
        budget = kill_after - GRACE_S if kill_after < budgets[name] + GRACE_S else budgets[name]
        command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--budget-s", f"{budget:.1f}",
                   "--deadline-unix", f"{time.time() + budget:.3f}", "--out", str(out), "--device", args.device,
                   "--media", str(args.media), "--seconds", str(args.seconds),
                   "--optimized-backend", args.optimized_backend] + (["--quick"] if args.quick else []) \
            + (["--build-trt"] if args.build_trt else [])
        status, reason = "ok", None
        with open(out / LOG_FILE, "a") as handle:
            handle.write(f"===== step {name} (budget {budget:.0f} s, killed after {kill_after:.0f} s)\n")
            handle.flush()
            if args.in_process:  # one process for every step (debugging: imports once, no time limit)
                status, reason = _step_in_process(command[2:], handle)
            else:
                returncode, timed_out = run_killable(command, kill_after, cwd=REPO, stdout=handle,
                                                     stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                if timed_out:
                    status, reason = "timeout", f"killed with its process group after {kill_after:.0f} s; rows measured before stay"
                elif returncode != 0:
                    status, reason = "failed", f"exit code {returncode} (see {LOG_FILE})"
        rows = [r for r in read_report(out)["results"].get(name, {}).get("rows", []) if r.get("kind") != "preflight"]
        problem = rows_problem(rows)
        if status == "ok" and rows and all("skipped" in r for r in rows):
            status, reason = "skipped", rows[0]["skipped"]
        elif status == "ok" and problem:  # the step's process exited 0, but what it ran did not finish well
            status, reason = problem
        elif status == "ok" and any("error" in r for r in rows):
            reason = "some cases failed: see their 'error'"
        append_record(out, {"event": "step", "name": name, "status": status, "reason": reason,
                            "seconds": round(time.monotonic() - started, 1)})
        cap_log(out / LOG_FILE)
        write_report(out)
        print(f"step {name}: {status}" + (f" ({reason})" if reason else ""), flush=True)
    append_record(out, {"event": "finish", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "total_s": round(time.time() - started_at, 1)})
    write_report(out)
    print((out / MD_FILE).read_text() if (out / MD_FILE).exists() else f"see {out / RESULT_FILE}")
    return 0


def rows_problem(rows: list[dict]) -> tuple[str, str] | None:
    """(status, reason) when a step's rows show it did not run to the end: pytest missing, failing or timed out
    (the tests step's summary row), or a measurement that timed out; None otherwise."""
    for row in rows:
        if row.get("kind") == "summary" and (row.get("returncode") != 0 or row.get("timed_out")):
            tail = str(row.get("output_tail") or "")
            if row.get("returncode") is None or row.get("timed_out"):
                return "timeout", tail.splitlines()[-1] if tail else "pytest timed out"
            if "No module named pytest" in tail:
                return "failed", "pytest is not installed (pip install -e \".[dev]\")"
            return "failed", f"pytest exit code {row.get('returncode')} (see the test rows)"
        if "timed out" in str(row.get("error", "")):
            return "timeout", str(row["error"])[:300]
    return None


def _step_in_process(argv: list[str], log) -> tuple[str, str | None]:  # noqa: ANN001
    """Run one step here (no time limit: for debugging); a raised error fails only that step."""
    import contextlib
    import traceback

    try:
        with contextlib.redirect_stdout(log):
            run_step(parse_args(argv))
    except Exception as exc:
        log.write(traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}"[:300]
    return "ok", None


# ---------------------------------------------------------------------------------------------- prepare
def prepare(args: argparse.Namespace) -> int:
    """Copy the demo clip (with a face track) and the golden subset the CUDA tests read into the media folder."""
    import shutil

    sys.path.insert(0, str(BENCHMARKS))
    import golden_subset

    media = Path(args.media)
    media.mkdir(parents=True, exist_ok=True)
    shared = shared_folder()
    for name in ("demo1_video.mp4", "demo1_audio.wav"):
        source = shared / "media" / name
        if not source.exists():
            print(f"error: {source} not found (set {SHARED_ENV} or run from a checkout beside ../shared)",
                  file=sys.stderr)
            return 2
        shutil.copyfile(source, media / name)  # not copy2: the shared files are read-only
    try:
        archive = golden_subset.write(shared / "golden", media / golden_subset.ARCHIVE)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {archive}: {archive.stat().st_size / 1e6:.1f} MB of golden fixtures for the CUDA tests")
    track = media / "demo1_face_track.json"
    if not track.exists() or args.force:
        write_face_track(media / "demo1_video.mp4", track, face=args.face)
    print(f"media ready in {media} (git-ignored: carry it to the GPU machine)")
    print("for a GPU machine whose Python lacks them, fetch the wheels of diffusers and PyAV here:")
    print("  " + " ".join(wheel_command()))
    print("and, for the video_io step's NVDEC / NVENC rows, those of the [gpu-video] extra (torchcodec also needs "
          "the FFmpeg libraries on that machine; without them its rows say so):")
    print("  " + " ".join(wheel_command(GPU_VIDEO_WHEELS)))
    return 0


def wheel_command(names: tuple[str, ...] = WHEELS) -> list[str]:
    """`pip download` of `names` at this environment's versions, as cp312 manylinux wheels, into .whl/."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return name

    return ["python", "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "-d", ".whl", *(pinned(n) for n in names)]


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
    p.add_argument("--out", default=str(DEFAULT_OUT), help="result folder (e.g. $OUT on a GPU machine)")
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (only with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one iteration: proves the plumbing (CPU, seconds)")
    p.add_argument("--steps", "--only", nargs="+", choices=STEP_NAMES, metavar="STEP",
                   help=f"run only these steps (any of {', '.join(STEP_NAMES)}), in the script's order")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's time budget")
    p.add_argument("--total-s", type=float, default=TOTAL_LIMIT_S,
                   help="wall-clock limit of the whole run, from $GPU_CHECK_STARTED_AT when set (default 420)")
    p.add_argument("--print-budget", action="store_true", help="print the planned seconds per step and in total")
    p.add_argument("--media", default=str(DEFAULT_MEDIA), help="folder with demo1_video.mp4, demo1_audio.wav, "
                                                               "demo1_face_track.json and the golden subset (--prepare)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of the demo clip the pipeline and stream use")
    p.add_argument("--optimized-backend", default="torch", choices=["torch", "compile", "onnxruntime", "tensorrt"],
                   help="backend of the optimized pipeline variant (compile costs minutes of warm-up per shape)")
    p.add_argument("--build-trt", action="store_true", help="build official-size TensorRT engines (needs minutes)")
    p.add_argument("--in-process", action="store_true",
                   help="run the steps in this process, without their time limits (debugging)")
    p.add_argument("--prepare", action="store_true", help="copy the demo clip and the golden subset into --media")
    p.add_argument("--face", default="mediapipe", help="detector for --prepare's face track")
    p.add_argument("--force", action="store_true", help="--prepare: recompute the face track")
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    p.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--deadline-unix", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device.startswith("cpu") and not (args.quick or args.prepare or args.print_budget):
        p.error("--device cpu needs --quick (the real sizes need a GPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_budget:
        return print_budget(args)
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
