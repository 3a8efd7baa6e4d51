"""Shared test setup: a private cache per test run, golden fixture paths, device markers.

Hermetic caches: before any test module is imported, `LATENTSYNC_ENGINE_CACHE` and `HF_HOME` point into a fresh
temporary folder (removed at the end of the run), so tests never read or write the user's
`~/.cache/latentsync-engine` or Hugging Face cache, and subprocesses started by tests inherit the same folder.
`tiny-random` is generated there on first use. The mediapipe face models (two .tflite files, 1.5 MB, from the
mediapipe 0.10.21 wheel on PyPI, hash-checked) are fetched into it at most once per run, by the first test that
needs them; set `LATENTSYNC_TEST_FACE_MODELS=DIR` to copy them from a folder that already holds them instead
(a fixture cache: the layout of `<cache>/models`, e.g. an earlier run's or `~/.cache/latentsync-engine/models`).
The InsightFace pack is never downloaded: `--face auto` falls back to mediapipe in tests (see
`_no_insightface_download`); InsightFace tests use small ONNX models of the same interface.

Hermetic run folder: every other cache and temporary file of the run lives in the same folder too (see
`_redirect_caches` and docs/testing.md): pytest's `tmp_path` (basetemp), `tempfile` (TMPDIR), Ray's session folders
(RAY_TMPDIR), `$HOME` itself (Ray's `~/.ray/auth_token`, anything else that writes under the home folder),
XDG cache/config/data folders, matplotlib, torch (hub, inductor), Triton and Hypothesis' example database. So a
run leaves `$HOME`, `/tmp` and the checkout as it found them (tests/test_hermetic.py and `.ci/run` check it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LATENTSYNC_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
MEDIA = SHARED / "media"
ENGINE_CACHE_ENV = "LATENTSYNC_ENGINE_CACHE"
FACE_FIXTURE_ENV = "LATENTSYNC_TEST_FACE_MODELS"  # a folder holding mediapipe-0.10.21/*.tflite (optional)

_RUN_CACHE: Path | None = None
_SAVED_ENV: dict[str, str | None] = {}


def _set_env(name: str, value: str) -> None:
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = value


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Point every cache at a private folder before test modules (and huggingface_hub) are imported."""
    global _RUN_CACHE
    seed = os.environ.get(FACE_FIXTURE_ENV)
    seed_dir = Path(seed).expanduser() if seed else None  # before $HOME moves
    _RUN_CACHE = Path(tempfile.mkdtemp(prefix="lse-"))  # short: Ray's socket paths live under it
    _set_env(ENGINE_CACHE_ENV, str(_RUN_CACHE))
    _set_env("HF_HOME", str(_RUN_CACHE / "huggingface"))
    _redirect_caches(config, _RUN_CACHE)
    if seed_dir:
        _seed_face_models(seed_dir)
    _no_insightface_download()


# Where each tool writes, relative to the run folder; every one of them defaults to $HOME or /tmp otherwise.
RUN_FOLDERS = {
    "TMPDIR": "tmp",  # tempfile, torch inductor's default cache, pip and other subprocesses
    "RAY_TMPDIR": "r",  # Ray session folders (default /tmp/ray); short: see RAY_SOCKET_ROOM
    "HOME": "home",  # Ray's ~/.ray/auth_token and anything else that writes under the home folder
    "XDG_CACHE_HOME": "home/.cache",
    "XDG_CONFIG_HOME": "home/.config",
    "XDG_DATA_HOME": "home/.local/share",
    "MPLCONFIGDIR": "home/.cache/matplotlib",
    "TORCH_HOME": "home/.cache/torch",
    "TORCHINDUCTOR_CACHE_DIR": "home/.cache/torchinductor",
    "TRITON_CACHE_DIR": "home/.cache/triton",
}


# Ray puts Unix sockets at RAY_TMPDIR/ray/session_<date>_<time>_<us>_<pid>/sockets/plasma_store, and a socket
# path has at most 107 bytes: this leaves RAY_TMPDIR itself 107 - 4 - 44 - 21 = 38 bytes.
RAY_SOCKET_ROOM = 38
_EXTRA_FOLDERS: list[Path] = []  # folders outside the run folder (a short Ray folder), removed with it


def _redirect_caches(config, run: Path) -> None:
    """Every cache and temporary folder of this process and its subprocesses goes under `run` (removed at exit)."""
    for name, relative in RUN_FOLDERS.items():
        folder = run / relative
        if name == "RAY_TMPDIR" and len(str(folder).encode()) > RAY_SOCKET_ROOM:
            # a deep run folder (a pytest started by a test, inside that test's run folder): Ray's sockets get a
            # short folder of their own, removed at the end like the run folder
            folder = Path(tempfile.mkdtemp(prefix="lser-", dir="/tmp"))
            _EXTRA_FOLDERS.append(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _set_env(name, str(folder))
    tempfile.tempdir = str(run / "tmp")  # tempfile caches its folder on first use (mkdtemp above used it)
    if config.option.basetemp is None:
        config.option.basetemp = str(run / "pytest")  # tmp_path: default /tmp/pytest-of-$USER
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        pass
    else:
        set_hypothesis_home_dir(run / "hypothesis")  # default: .hypothesis/ in the working directory


def _no_insightface_download() -> None:
    """`--face auto` in tests uses mediapipe without trying the 280 MB InsightFace pack (non-commercial licence):
    the cache records the download as failed, as a machine without access would after its first try."""
    import json
    import time

    from engine.face.detection import FETCH_FAILED_FILE, models

    record = models.cache_dir() / FETCH_FAILED_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"time": time.time(), "reason": "tests never download the InsightFace pack"}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure caused by an ImportError says which package it came from (an upstream release, or a shadow)."""
    outcome = yield
    if call.excinfo is not None:
        _add_import_origin(outcome.get_result(), call.excinfo.value)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    call = getattr(report, "call", None)  # pytest keeps the CallInfo on the report until after this hook
    if report.failed and call is not None and call.excinfo is not None:
        _add_import_origin(report, call.excinfo.value)


def _add_import_origin(report, exc: BaseException) -> None:
    from engine.shadowing import explain_import_error

    origin = explain_import_error(exc)
    if origin:
        report.sections.append(("import error origin", origin))


def pytest_unconfigure(config):
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = None
    if _RUN_CACHE is not None:
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)
    for folder in _EXTRA_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def _seed_face_models(source: Path) -> None:
    """Copy the mediapipe model files from a fixture cache (only files whose hash matches are kept)."""
    from engine.face.detection import models

    for model in models.MEDIAPIPE_WHEEL.members.values():
        src = source / model.name
        if src.is_file() and models.sha256_of(src) == model.sha256:
            dst = models.cache_dir() / model.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_trt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return _has_cuda()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA GPU")
    cuda, trt = _has_cuda(), _has_trt()
    for item in items:
        if "requires_cuda" in item.keywords and not cuda:
            item.add_marker(skip_cuda)
        if "requires_trt" in item.keywords and not trt:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def engine_cache() -> Path:
    """This run's private engine cache (LATENTSYNC_ENGINE_CACHE)."""
    return Path(os.environ[ENGINE_CACHE_ENV])


@pytest.fixture(scope="session")
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"test media not found at {MEDIA}")
    return MEDIA


@dataclasses.dataclass(frozen=True)
class TinyRandomExport:
    """The quick start's `engine export --model tiny-random --device cpu`, as a user runs it (see tiny_random_export)."""

    out: Path  # the folder holding every exported network (the engine cache's default artifact folder)
    written: dict  # network -> file, the command's JSON on stdout
    lines: list  # every line the command printed (stdout and stderr)
    cwd: Path  # its working directory, empty before the run


@pytest.fixture(scope="session")
def tiny_random_export(tmp_path_factory) -> TinyRandomExport:
    """`python -m engine export --model tiny-random --device cpu`, run once per test run (the quick start's command,
    about 30 s of dynamo exports on an idle 2-core machine) and shared read-only by the export and backend tests;
    copy files before changing them. It runs in a private engine cache so the folder it registers does not opt the
    run's other tests into artifacts (`--backend auto` would pick them)."""
    from engine.weights import engine_cache_dir
    from engine.weights.tiny import ensure_tiny_random

    # The same tiny-random files as the run's (exports are keyed to the checkpoint files' digests, and a second
    # generation of tiny-random does not reproduce the U-Net checkpoint byte for byte).
    model = ensure_tiny_random()
    private = tmp_path_factory.mktemp("export-engine-cache")
    shutil.copytree(model, private / model.relative_to(engine_cache_dir()))
    cwd = tmp_path_factory.mktemp("export-cwd")
    done = subprocess.run([sys.executable, "-m", "engine", "export", "--model", "tiny-random", "--device", "cpu"],
                          capture_output=True, text=True, timeout=900, cwd=cwd,
                          env={**os.environ, ENGINE_CACHE_ENV: str(private)})
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(done.stdout)
    folders = {Path(p).parent for p in written.values()}
    assert len(folders) == 1, written
    return TinyRandomExport(out=folders.pop(), written=written, lines=(done.stdout + done.stderr).splitlines(), cwd=cwd)


@pytest.fixture(scope="session")
def tiny_random_onnx(tiny_random_export) -> Path:
    """The folder of this run's `engine export --model tiny-random` (tiny_random_export), read-only."""
    return tiny_random_export.out
