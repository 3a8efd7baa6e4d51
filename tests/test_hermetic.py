"""A test run leaves `$HOME` and the temporary folder as it found them (issue 22, item 4).

A pytest subprocess runs a few representative tests, each of which touches a tool that writes caches by default
under `$HOME` or `/tmp`: Ray (a private cluster through `cluster_helpers.local_cluster`, as the cluster tests
start it: session folders, `~/.ray/auth_token`), matplotlib (the memory benchmark's plot), ONNX Runtime and
tiny-random (a real `engine run`-style pipeline with mediapipe faces), an ONNX Runtime session, and `tmp_path`. The subprocess gets a `$HOME` and
a `TMPDIR` of its own, so every difference is its doing even on a machine shared with other work; both must be
exactly as before afterwards (names, sizes and mtimes of everything in them). `.ci/run` checks the real `$HOME` and
`/tmp` around the whole CI run with the same snapshot code (tests/hermetic_snapshot.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import MEDIA, REPO_ROOT, SHARED
from hermetic_snapshot import differences, take

REPRESENTATIVE = (
    "tests/test_pipeline_e2e.py::test_run_writes_valid_mp4_as_long_as_the_speech",  # tiny-random, mediapipe, PyAV
    "tests/test_backends.py::test_onnxruntime_binding_takes_every_mapped_dtype[dtype3]",  # an ONNX Runtime session
    "tests/test_benchmarks_smoke.py::test_memory_report_helpers_tile_faces_and_fit_the_peak_slope",  # matplotlib
)
RAY_PROBE = '''
import ray

from cluster_helpers import local_cluster


def test_a_ray_task_runs_on_a_private_cluster(tmp_path):
    (tmp_path / "written.txt").write_text("tmp_path is writable")
    with local_cluster(num_cpus=1):
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
'''


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` -> (size, mtime_ns): all of it, not only the top level."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def test_a_run_leaves_home_and_the_temporary_folder_as_it_found_them(engine_cache, tmp_path):
    # The subprocess's TMPDIR stays short (this run's folder + 4 bytes): its own run folder, and Ray's socket
    # paths in it, must fit (conftest.RAY_SOCKET_ROOM).
    short = engine_cache / "h"
    short.mkdir()
    try:
        _check_a_run(short / "home", short / "t", tmp_path, engine_cache)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _check_a_run(home: Path, tmp: Path, tmp_path: Path, engine_cache: Path) -> None:
    (home / ".cache").mkdir(parents=True)
    (home / ".cache" / "users-own.txt").write_text("a file the run must not touch")
    tmp.mkdir()
    probe = tmp_path / "probe" / "test_ray_probe.py"
    probe.parent.mkdir()
    probe.write_text(RAY_PROBE)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "RAY_")) and k not in ("MPLCONFIGDIR", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR",
                                                                 "TRITON_CACHE_DIR", "HF_HOME",
                                                                 "LATENTSYNC_ENGINE_CACHE")}
    env.update(HOME=str(home), TMPDIR=str(tmp))  # as a user's shell has them: nothing else redirected
    env["LATENTSYNC_SHARED"] = str(SHARED)  # the same media as this run (the pipeline test skips without it)
    faces = engine_cache / "models"
    if faces.is_dir():  # the face models this run fetched already (else the subprocess fetches its own)
        env["LATENTSYNC_TEST_FACE_MODELS"] = str(faces)
    before_home, before_tmp, before_snapshot = _tree(home), _tree(tmp), take(home=home, tmp=tmp)

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                           *REPRESENTATIVE,
                           str(probe)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{4 if MEDIA.is_dir() else 3} passed" in done.stdout, done.stdout[-2000:]
    assert _tree(home) == before_home, f"the run wrote under $HOME: {sorted(set(_tree(home)) ^ set(before_home))}"
    assert _tree(tmp) == before_tmp, f"the run left files in TMPDIR: {sorted(set(_tree(tmp)) ^ set(before_tmp))}"
    assert differences(before_snapshot, take(home=home, tmp=tmp), ignore=[]) == []


def test_the_snapshot_sees_added_changed_and_removed_entries(tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    (home / ".cache" / "tool").mkdir(parents=True)
    tmp.mkdir()
    (tmp / "old").write_text("x")
    (home / ".cache" / "tool" / "deep.bin").write_text("x")
    before = take(home=home, tmp=tmp)
    (tmp / "old").unlink()
    (tmp / "ray").mkdir()
    (home / ".cache" / "tool" / "deep.bin").write_text("xy")
    (home / ".ray").mkdir()
    assert differences(before, take(home=home, tmp=tmp), ignore=[]) == [
        f"removed {tmp}/old", f"added   {tmp}/ray", "changed ~/.cache/tool/deep.bin", "added   ~/.ray"]
    assert differences(before, take(home=home, tmp=tmp), ignore=[f"{tmp}/*", "~/.ray"]) == [
        "changed ~/.cache/tool/deep.bin"]
