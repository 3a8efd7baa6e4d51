"""benchmarks/gpu_check.py before the one run on a GPU machine: its plan, its process handling, its files, and a
rehearsal of the remote procedure of docs/gpu-check.md in a copy that holds only what would travel.

The GPU numbers themselves come from a GPU machine; here `--device cpu --quick` runs every step once on tiny
models, out of process exactly as on the GPU machine, with no ../shared and no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
DOC = REPO / "docs" / "gpu-check.md"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402

STATUSES = {"ok", "failed", "timeout", "skipped"}
CARRIED = ("benchmarks/media", ".whl")  # the run tool's `carry` in docs/gpu-check.md
# Connections anywhere but this machine fail, as on a GPU machine with no network access
NO_NETWORK = '''
import socket
_connect = socket.socket.connect
def _local_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
        return _connect(self, address)
    raise OSError(101, f"network is unreachable (gpu_check rehearsal): {address!r}")
socket.socket.connect = _local_only
'''


# ---------------------------------------------------------------------------------------------- the plan
def test_default_run_is_planned_within_420_seconds():
    steps = dict(gpu_check.STEPS)
    planned = sum(seconds + gpu_check.GRACE_S for seconds in steps.values()) + gpu_check.STARTUP_ALLOWANCE_S
    assert planned <= 420 and gpu_check.TOTAL_LIMIT_S <= 420
    assert gpu_check.planned_budget()["total_s"] == pytest.approx(planned)
    assert set(steps) == {"tests", "calibrate", "profile", "unet", "vae", "pipeline", "streaming", "system", "video_io"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--print-budget"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    total = re.search(r"planned total: (\d+) s", done.stdout)
    assert total and int(total.group(1)) == round(planned) and int(total.group(1)) <= 420, done.stdout
    assert all(name in done.stdout for name in steps)


def test_one_step_budget_and_aliases():
    assert gpu_check.parse_args(["--only", "profile"]).steps == ["profile"]
    one = gpu_check.planned_budget(["unet"], scale=4)
    assert [r["step"] for r in one["steps"]] == ["unet"] and one["steps"][0]["budget_s"] == 4 * dict(gpu_check.STEPS)["unet"]


def test_cpu_without_quick_and_cuda_without_a_gpu_are_refused(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--device cpu needs --quick" in done.stderr
    import torch

    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gpu")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 7 and "expected a CUDA GPU" in done.stderr
        assert not (tmp_path / "gpu").exists()  # nothing written before the check


# ---------------------------------------------------------------------------------------------- processes, files
def test_a_timeout_kills_the_whole_process_tree(tmp_path):
    from process_tree import run_killable

    pid_file = tmp_path / "grandchild.pid"
    child = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             f" open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    started = time.monotonic()
    code, timed_out = run_killable([sys.executable, "-c", child], 3.0)
    assert timed_out and code is None and time.monotonic() - started < 20
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.1)
    assert not _alive(grandchild)  # the grandchild (think: pytest under a step, inductor workers) went too


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


def test_result_files_are_replaced_whole_without_a_temporary_file_beside_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for k in range(3):
        gpu_check.write_atomically(out / gpu_check.RESULT_FILE, json.dumps({"k": k}))
        gpu_check.write_atomically(out / gpu_check.PLOT_FILE, b"\x89PNG" + bytes(k))
    assert sorted(p.name for p in out.iterdir()) == sorted([gpu_check.RESULT_FILE, gpu_check.PLOT_FILE])
    assert json.loads((out / gpu_check.RESULT_FILE).read_text()) == {"k": 2}
    assert len(gpu_check.RESULT_FILES) <= gpu_check.MAX_RESULT_FILES


def test_rows_cut_by_a_kill_are_skipped_and_the_log_is_capped(tmp_path):
    gpu_check.append_record(tmp_path, {"event": "start", "steps": [{"name": "vae", "status": "pending"}]})
    gpu_check.append_row(tmp_path, "vae", {"kind": "vae", "skipped": "budget"})
    with open(tmp_path / gpu_check.ROWS_FILE, "a") as handle:
        handle.write('{"step": "vae", "kind": "va')  # the kill came mid-line
    report = gpu_check.read_report(tmp_path)
    assert report["results"]["vae"]["rows"] == [{"kind": "vae", "skipped": "budget"}]
    log = tmp_path / "gpu_check.log"
    log.write_bytes(b"a" * 5000 + b"z" * 5000)
    gpu_check.cap_log(log, keep=2000)
    data = log.read_bytes()
    assert len(data) < 2200 and data.startswith(b"a") and data.endswith(b"z") and b"bytes cut" in data


def test_a_benchmark_killed_at_the_budget_keeps_the_json_it_wrote_so_far(tmp_path):
    """How the streaming step runs benchmarks/throughput.py (which rewrites its JSON after every row)."""
    import gpu_measure

    result = tmp_path / "result.json"
    script = tmp_path / "bench.py"
    script.write_text(f"import json, time; open({str(result)!r}, 'w').write(json.dumps({{'runs': [1], 'complete': False}}));"
                      " time.sleep(60)")
    row = gpu_measure._script_row("throughput", script, [sys.executable, str(script)], gpu_measure.Budget(8.0), result,
                                  minimum_s=1.0)
    assert "timed out" in row["error"] and row["partial"] == {"runs": [1], "complete": False}
    missing = gpu_measure._script_row("system", tmp_path / "absent.py", [], gpu_measure.Budget(8.0), result, minimum_s=1)
    assert "is not in this checkout" in missing["skipped"]


# ---------------------------------------------------------------------------------------------- profile, calibrate
def test_op_families_and_idle_gaps_between_stages():
    from gpu_profile import idle_gaps, op_family

    assert op_family("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32") == "conv"
    assert op_family("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_nn") == "GEMM"
    assert op_family("aten::addmm") == "GEMM" and op_family("aten::mm") == "GEMM"
    assert op_family("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert op_family("void at::native::(anonymous namespace)::group_norm_nhwc_kernel") == "norm"
    assert op_family("Memcpy HtoD (Pageable -> Device)") == "copies" and op_family("aten::copy_") == "copies"
    assert op_family("void at::native::vectorized_elementwise_kernel<4, silu>") == "elementwise"
    assert op_family("nvjpeg_decode") == "video I/O"
    assert op_family("aten::normal_") == "random"  # a noise draw, not a normalisation
    work = [("k1", 0.0, 100.0), ("k2", 50.0, 120.0), ("k3", 300.0, 400.0), ("k4", 402.0, 500.0), ("k5", 900.0, 1000.0)]
    stages = [("unet", 0.0, 410.0), ("vae_decoder", 800.0, 1000.0)]
    gaps = idle_gaps(work, stages)
    assert gaps["busy_ms"] == pytest.approx(0.418) and gaps["span_ms"] == pytest.approx(1.0)
    assert gaps["gaps"] == 2  # the 2 µs gap is launch jitter
    assert gaps["by_stage_boundary_ms"] == {"unet -> vae_decoder": 0.4, "unet": 0.18}
    assert gaps["largest"][0]["after"] == "k4" and gaps["largest"][0]["before"] == "k5"


def test_calibration_profile_follows_the_device_name():
    from gpu_calibrate import profile_for

    assert profile_for("NVIDIA H100 80GB HBM3") == ("h100", None)
    assert profile_for("NVIDIA H200")[0] == "h200" and profile_for("NVIDIA A100-SXM4-80GB")[0] == "a100"
    assert profile_for("NVIDIA L4")[0] == "l4" and profile_for("NVIDIA GeForce RTX 4090")[0] == "rtx4090"
    name, note = profile_for("NVIDIA B200")
    assert name == "h100" and "B200" in note


# ---------------------------------------------------------------------------------------------- golden subset
def _small_golden(root: Path) -> Path:
    """A golden/ folder with the layout and keys of the real one, small (real: 108 MB, ../shared)."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    from engine.audio import random_whisper_state_dict, tiny_whisper_dims

    rng = np.random.default_rng(0)
    golden, e2e = root / "golden", root / "golden" / "e2e_demo1"
    (e2e / "weights" / "whisper").mkdir(parents=True)
    save_file({"audio_16k": rng.standard_normal(800).astype(np.float32),
               "landmarks3": rng.random((12, 3, 2), np.float32)}, str(e2e / "inputs.safetensors"))
    save_file({"whisper_feature": rng.random((6, 5, 8), np.float32), "latents": rng.random((9, 9), np.float32)},
              str(e2e / "expected.safetensors"))
    np.savez(e2e / "inputs_frames.npz", frames=rng.integers(0, 255, (12, 8, 8, 3), np.uint8))
    save_file({"frames": rng.integers(0, 255, (8, 16, 16, 3), np.uint8), "affine_matrices": rng.random((8, 2, 3), np.float32),
               "resized_face_0": rng.integers(0, 255, (4, 4, 3), np.uint8), "resized_face_7": rng.integers(0, 255, (4, 4, 3), np.uint8),
               "aligned_face_0": rng.integers(0, 255, (5, 5, 3), np.uint8)}, str(golden / "face_align_512_fp32.safetensors"))
    dims = {**tiny_whisper_dims(), "n_audio_ctx": 16, "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 1}
    state = random_whisper_state_dict(dims, seed=3, include_decoder=True, dtype=torch.float16)
    torch.save({"dims": dims, "model_state_dict": state}, e2e / "weights" / "whisper" / "tiny.pt")
    return golden


def _check_subset(full: Path, part: Path) -> None:
    """`part` holds exactly what the three CUDA tests read of `full` (see benchmarks/golden_subset.py)."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    face, want = (load_file(str(g / "face_align_512_fp32.safetensors")) for g in (part, full))
    assert set(face) == {"frames", "affine_matrices", "resized_face_0", "resized_face_7"}
    np.testing.assert_array_equal(face["frames"], want["frames"][:2])  # test_face_align: test_cuda_matches_cpu
    np.testing.assert_array_equal(face["affine_matrices"], want["affine_matrices"][:2])
    np.testing.assert_array_equal(face["resized_face_7"], want["resized_face_7"])
    e2e, e2e_full = part / "e2e_demo1", full / "e2e_demo1"
    np.testing.assert_array_equal(load_file(str(e2e / "expected.safetensors"))["whisper_feature"],
                                  load_file(str(e2e_full / "expected.safetensors"))["whisper_feature"])
    assert (e2e / "inputs.safetensors").read_bytes() == (e2e_full / "inputs.safetensors").read_bytes()
    np.testing.assert_array_equal(np.load(e2e / "inputs_frames.npz")["frames"],
                                  np.load(e2e_full / "inputs_frames.npz")["frames"][:8])  # test_runtime_engine
    got, original = (torch.load(g / "e2e_demo1" / "weights" / "whisper" / "tiny.pt", weights_only=True) for g in (part, full))
    assert got["dims"] == original["dims"]
    encoder = {k: v for k, v in original["model_state_dict"].items() if k.startswith("encoder.")}
    assert got["model_state_dict"].keys() == encoder.keys()  # test_audio: the encoder, positional embedding rebuilt
    assert all(torch.equal(got["model_state_dict"][k], v) for k, v in encoder.items())
    from engine.audio import load_whisper_encoder

    load_whisper_encoder(part / "e2e_demo1" / "weights" / "whisper" / "tiny.pt")


def test_golden_subset_keeps_what_the_cuda_tests_read_and_is_found_through_one_setting(tmp_path, monkeypatch):
    import golden_subset

    full = _small_golden(tmp_path / "shared")
    archive = golden_subset.write(full, tmp_path / "media" / golden_subset.ARCHIVE)
    assert sorted(p.name for p in archive.parent.iterdir()) == [golden_subset.ARCHIVE]  # no .partial left
    part = golden_subset.extract(archive, tmp_path / "unpacked") / "golden"
    _check_subset(full, part)
    # gpu_check's tests step: ../shared wins when present, else the prepared subset, through LATENTSYNC_SHARED
    monkeypatch.setenv(gpu_check.SHARED_ENV, str(tmp_path / "nowhere"))
    shared, how = gpu_check.golden_for_tests(archive.parent, tmp_path / "scratch")
    assert shared == tmp_path / "scratch" and "subset" in how and (shared / "golden" / "e2e_demo1").is_dir()
    assert gpu_check.golden_for_tests(tmp_path / "empty", tmp_path / "scratch2")[0] is None
    monkeypatch.setenv(gpu_check.SHARED_ENV, str(tmp_path / "shared"))
    assert gpu_check.golden_for_tests(archive.parent, tmp_path / "scratch3")[0] == tmp_path / "shared"
    _cuda_tests_reach_their_bodies(tmp_path / "scratch", tmp_path / "plugin")


GOLDEN_CUDA_TESTS = ("tests/test_audio.py::test_cuda_fp16_encode_is_close_to_cpu_fp32",
                     "tests/test_face_align.py::test_cuda_matches_cpu",
                     "tests/test_runtime_engine.py::test_cuda_batches_match_solo_and_the_face_path_stays_on_the_device")
UNSKIP_CUDA = '''
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:  # undo "needs a CUDA GPU" only: the fixtures resolve, the body then fails without CUDA
        item.own_markers = [m for m in item.own_markers if not (m.name == "skip" and "CUDA" in m.kwargs.get("reason", ""))]
'''


def _cuda_tests_reach_their_bodies(shared: Path, plugin: Path) -> None:
    """With LATENTSYNC_SHARED at the unpacked subset, the three CUDA tests that read golden files get past their
    fixtures (no "golden fixtures not found" skip): here, without a GPU, they then fail on the first CUDA call."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: gpu_check's tests step runs these tests for real")
    plugin.mkdir()
    (plugin / "unskip_cuda.py").write_text(UNSKIP_CUDA)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "unskip_cuda", "-p", "no:cacheprovider",
                           *GOLDEN_CUDA_TESTS], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LATENTSYNC_SHARED": str(shared), "PYTHONPATH": str(plugin), "COLUMNS": "1000"})
    assert "golden fixtures not found" not in done.stdout and "3 failed" in done.stdout, done.stdout[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 3 and all("CUDA" in line for line in failed), failed  # on CUDA, not on a missing file


@pytest.mark.slow  # LZMA over 16 MB of whisper weights: a minute on a loaded 2-core machine
def test_golden_subset_of_the_real_fixtures_fits_16_mb(tmp_path):
    import golden_subset

    shared = gpu_check.shared_folder()
    if not (shared / "golden").is_dir():
        pytest.skip(f"golden fixtures not found at {shared}/golden (set LATENTSYNC_SHARED)")
    archive = golden_subset.write(shared / "golden", tmp_path / golden_subset.ARCHIVE)
    assert archive.stat().st_size <= golden_subset.MAX_BYTES
    _check_subset(shared / "golden", golden_subset.extract(archive, tmp_path / "shared") / "golden")


# ---------------------------------------------------------------------------------------------- the rehearsal
def remote_command() -> list[str]:
    """The command docs/gpu-check.md gives the run tool, as an argument list."""
    text = DOC.read_text()
    (command,) = re.findall(r"```bash\n(bash benchmarks/gpu_remote\.sh[^\n]*)\n```", text)
    return command.split()


def travelling_copy(dest: Path) -> Path:
    """The working tree as it travels to the GPU machine: git's files (tracked and untracked-not-ignored) plus
    the carried paths; nothing else (no .venv, no ../shared beside it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for carried in CARRIED:
        if (REPO / carried).exists():
            shutil.copytree(REPO / carried, dest / carried, dirs_exist_ok=True)
    return dest


def rehearse(tmp_path: Path, *extra: str) -> tuple[Path, float]:
    """docs/gpu-check.md's command, run the way the run tool runs it: in a copy of what travels, with
    `--device cpu --quick` (and `extra`), LATENTSYNC_SHARED pointing nowhere, no ../shared, no network.
    Checks what any run returns (at most six files, each under 16 MiB, skip reasons first); returns (OUT, seconds)."""
    from process_tree import run_killable

    command = remote_command()
    assert command[:2] == ["bash", "benchmarks/gpu_remote.sh"]
    repo = travelling_copy(tmp_path / "checkout" / "repo")
    assert not (repo.parent / "shared").exists() and not (repo / ".venv").exists()
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    out = tmp_path / "OUT"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "LATENTSYNC_SHARED": str(tmp_path / "nowhere"),
           "PYTHONPATH": str(guard), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HTTP_PROXY": "http://10.255.255.1:9", "HTTPS_PROXY": "http://10.255.255.1:9", "HF_HUB_OFFLINE": "1"}
    env.pop("GPU_CHECK_STARTED_AT", None)
    started = time.monotonic()
    with open(tmp_path / "output.txt", "w") as output:  # on a timeout, every process it started is killed too
        code, timed_out = run_killable(command + ["--device", "cpu", "--quick", *extra], 1800, cwd=repo, env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    assert code == 0 and not timed_out, (tmp_path / "output.txt").read_text()[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gpu_check.MAX_RESULT_FILES and set(files) <= set(gpu_check.RESULT_FILES), files
    assert all((out / f).is_file() and (out / f).stat().st_size <= gpu_check.MAX_FILE_BYTES for f in files)
    records = [json.loads(line) for line in (out / gpu_check.ROWS_FILE).read_text().splitlines()]
    assert records[0]["event"] == "start" and records[-1]["event"] == "finish"
    first_measured = next(i for i, r in enumerate(records) if r.get("kind") not in (None, "preflight"))
    assert all(r.get("kind") == "preflight" for r in records[1:first_measured])  # skip reasons first
    report = json.loads((out / gpu_check.RESULT_FILE).read_text())
    assert report == gpu_check.read_report(out)  # the JSON is the rows, gathered
    print(f"rehearsal {' '.join(extra) or '(every step)'}: {seconds:.0f} s, files {files}")
    return out, seconds


def test_remote_procedure_rehearsal_of_two_steps(tmp_path):
    """The procedure end to end, on its two cheapest steps (the CI guard; the whole run is the slow test below)."""
    out, _ = rehearse(tmp_path, "--only", "vae", "system", "video_io")
    report = gpu_check.read_report(out)
    assert [s["name"] for s in report["steps"]] == ["vae", "system", "video_io"]
    assert report["steps"][0]["status"] == "ok"
    assert {r["op"] for r in report["results"]["vae"]["rows"]} == {"encode", "decode"}
    _check_video_io_rows(report)
    assert "## Video I/O" in (out / gpu_check.MD_FILE).read_text()
    assert "| step | status |" in (out / gpu_check.MD_FILE).read_text()


@pytest.mark.slow  # every step out of process: 3.5 min of CPU, 5-11 min of wall time on the loaded 2-core machine
def test_remote_procedure_rehearsal_returns_at_most_six_small_files(tmp_path):
    out, _ = rehearse(tmp_path)
    _check_quick_report(json.loads((out / gpu_check.RESULT_FILE).read_text()), out)


def _check_video_io_rows(report: dict) -> None:
    """video_io on a CPU: PyAV decode and x264 encode measured; the NVDEC / NVENC rows and the job say why not."""
    assert next(s for s in report["steps"] if s["name"] == "video_io")["status"] == "ok"
    rows = [r for r in report["results"]["video_io"]["rows"] if r["kind"] == "video_io"]
    measured = {(r["op"], r["path"]) for r in rows if "frames_per_s" in r}
    assert measured == {("decode", "pyav (cpu)"), ("encode", "x264 veryfast crf 18"), ("encode", "x264 medium crf 18")}
    gpu = [r for r in rows if "nvdec" in str(r.get("path")) or "nvenc" in str(r.get("path")) or r["op"] == "job"]
    assert len(gpu) == 3 and all("CUDA" in r["skipped"] or "quick" in r["skipped"] for r in gpu), gpu


def _check_quick_report(report: dict, out: Path) -> None:
    assert report["benchmark"] == "gpu_check" and report["format"] == gpu_check.FORMAT and report["quick"] is True
    assert [s["name"] for s in report["steps"]] == list(gpu_check.STEP_NAMES)  # the order a timeout relies on
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert all(s in STATUSES for s in status.values()) and report["total_s"] > 0
    assert all(status[n] == "ok" for n in gpu_check.STEP_NAMES if n != "system"), \
        [(s["name"], s["status"], s["reason"]) for s in report["steps"]]
    results = report["results"]
    (golden,) = [r for r in results["tests"]["rows"] if r["kind"] == "golden"]
    assert golden["found"] is False  # no ../shared and no prepared subset in this copy: said, not hidden
    tests = [r for r in results["tests"]["rows"] if r["kind"] == "test"]
    assert tests and all(r["outcome"] in ("passed", "skipped") for r in tests)  # skipped here: no GPU
    (summary,) = [r for r in results["tests"]["rows"] if r["kind"] == "summary"]
    assert summary["counts"] and summary["returncode"] == 0
    calls = [r for r in results["calibrate"]["rows"] if r["kind"] == "calibration" and "measured_ms" in r]
    assert {r["network"] for r in calls} == {"unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder"}
    assert all(r["flops"] > 0 and r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in calls)
    calibration = json.loads((out / gpu_check.CALIBRATION_FILE).read_text())
    assert calibration["kind"] == "modelled-device-calibration" and calibration["valid"] is False
    assert set(calibration["efficiency"]) == {r["network"] for r in calls}
    profiles = [r for r in results["profile"]["rows"] if r["kind"] == "profile"]
    assert [r["preset"] for r in profiles] == ["reference", "fast"], profiles
    for r in profiles:
        assert 0 < len(r["top"]) <= 25 and sum(v["share"] for v in r["families"].values()) == pytest.approx(1, abs=0.01)
        assert r["idle"]["span_ms"] > 0 and r["stages_seen"]  # the engine's stage labels are in the trace
    unet = [r for r in results["unet"]["rows"] if r.get("kind") == "unet" and "ms_median" in r]
    assert {r["pass"] for r in unet} == {"full", "shallow"} and all(r["finite"] for r in unet)
    assert {r["op"] for r in results["vae"]["rows"]} == {"encode", "decode"}
    pipeline = [r for r in results["pipeline"]["rows"] if "frames_per_s" in r]
    assert {r["variant"] for r in pipeline} == {"eager-serial", "optimized"}
    stream = [r for r in results["streaming"]["rows"] if r["kind"] == "stream"]
    assert stream and stream[0]["first_frame_latency_s"] > 0
    (throughput,) = [r for r in results["streaming"]["rows"] if r["kind"] == "throughput"]
    # complete, or killed at the step's budget with what it wrote so far (a loaded CPU can be that slow)
    assert (throughput.get("result") or {}).get("complete") is True or "partial" in throughput, throughput
    _check_video_io_rows(report)
    (system,) = [r for r in results["system"]["rows"] if r["kind"] in ("system", "preflight")][-1:]
    assert "result" in system or "skipped" in system or "note" in system
    markdown = (out / gpu_check.MD_FILE).read_text()
    assert "| step | status |" in markdown and "Kernel-level profile" in markdown and "Calibration" in markdown
