"""TensorRT artifacts without TensorRT: keys, manifests, stale detection, timing cache, locking (R15-R18).

Only the builder call itself is faked (`build_fn`); hashing, manifests, locks and cache logic are real.
The requires_trt tests build and run real engines where TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from engine.errors import BackendUnavailableError, IncompatibleEngineError
from export.engines import engine_path, ensure_engine, expected_fields
from export.locking import atomic_write_bytes, file_lock
from export.specs import BuildShape
from export.wrappers import geometry_of
from export.timing_cache import load_timing_cache, save_timing_cache, timing_cache_path
from export.trt_builder import BuildSettings
from export.trt_env import TrtEnvironment

ENV = TrtEnvironment(trt_version="10.8.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
OTHER_TRT = TrtEnvironment(trt_version="10.3.0", gpu_name=ENV.gpu_name, compute_capability="9.0")
OTHER_GPU = TrtEnvironment(trt_version="10.8.0", gpu_name="NVIDIA A10G", compute_capability="8.6")
SHAPE = BuildShape(batch=2, frames=16, latent_size=32)
GEOMETRY = geometry_of()


class FakeBuilder:
    """Stands in for TensorRT's builder: records calls, returns deterministic 'plans' and timing caches."""

    def __init__(self, delay_s: float = 0.0, log_file: Path | None = None):
        self.calls: list[dict] = []
        self.delay_s, self.log_file = delay_s, log_file

    def __call__(self, onnx_path, profile, settings, timing_cache):
        self.calls.append({"profile": profile, "settings": settings, "timing_cache": timing_cache})
        if self.log_file is not None:
            with open(self.log_file, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        time.sleep(self.delay_s)
        plan = f"PLAN {Path(onnx_path).read_bytes()!r} {settings.precision} {sorted(profile)}".encode() * 64
        return plan, b"TIMING-CACHE-" + str(len(self.calls)).encode()


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "unet.onnx"
    path.write_bytes(b"fake onnx graph v1")
    return path


def _ensure(onnx_file, builder, *, env=ENV, settings=BuildSettings(), no_build=False, network="unet", **kw):
    return ensure_engine(network, onnx_file, onnx_file.parent, geometry=GEOMETRY, shape=SHAPE, settings=settings,
                         env=env, no_build=no_build, build_fn=builder, **kw)


def test_build_writes_engine_and_manifest_then_reuses(onnx_file):
    builder = FakeBuilder()
    path = _ensure(onnx_file, builder)
    assert path.name.startswith("unet.fp16.") and path.suffix == ".engine"
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["trt_version"] == "10.8.0" and manifest["compute_capability"] == "9.0"
    assert manifest["gpu_name"] == ENV.gpu_name and manifest["precision"] == "fp16"
    assert manifest["engine_size"] == path.stat().st_size and len(manifest["engine_sha256"]) == 64
    assert manifest["profiles"]["sample"] == [[1, 13, 1, 32, 32], [2, 13, 16, 32, 32], [2, 13, 16, 32, 32]]
    assert manifest["build_flags"]["precision"] == "fp16"
    assert builder.calls[0]["profile"]["encoder_hidden_states"] == ((1, 50, 384), (32, 50, 384), (32, 50, 384))
    assert _ensure(onnx_file, builder) == path
    assert len(builder.calls) == 1  # reused, not rebuilt


@pytest.mark.parametrize("change", ["env", "gpu", "precision", "onnx", "frames"])
def test_engine_key_changes_with_every_input(onnx_file, change):
    base = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(), ENV)
    if change == "env":
        other = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(), OTHER_TRT)
    elif change == "gpu":
        other = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(), OTHER_GPU)
    elif change == "precision":
        other = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(precision="fp32"), ENV)
    elif change == "onnx":
        onnx_file.write_bytes(b"fake onnx graph v2")
        other = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(), ENV)
    else:
        other = expected_fields("unet", onnx_file, GEOMETRY, BuildShape(frames=8, latent_size=32), BuildSettings(), ENV)
    assert engine_path(onnx_file.parent, base) != engine_path(onnx_file.parent, other)


def test_no_build_lists_differing_fields_of_stale_engine(onnx_file):
    _ensure(onnx_file, FakeBuilder(), env=OTHER_TRT)
    with pytest.raises(IncompatibleEngineError) as info:
        _ensure(onnx_file, FakeBuilder(), no_build=True)
    message = str(info.value)
    assert "trt_version: expected '10.8.0', found '10.3.0'" in message
    assert "--no-build" in message
    builder = FakeBuilder()
    _ensure(onnx_file, builder)  # default: rebuilt
    assert len(builder.calls) == 1


def test_manifestless_and_truncated_engines_are_rebuilt_before_deserializing(onnx_file, caplog):
    builder = FakeBuilder()
    path = _ensure(onnx_file, builder)
    manifest = path.with_name(path.name + ".json")
    manifest.unlink()
    with pytest.raises(IncompatibleEngineError, match="engine has no manifest"):
        _ensure(onnx_file, builder, no_build=True)
    with caplog.at_level(logging.INFO, logger="export.engines"):
        _ensure(onnx_file, builder)
    assert len(builder.calls) == 2 and any("no manifest" in r.getMessage() for r in caplog.records)
    with open(path, "r+b") as handle:  # half-written: cut the file
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(IncompatibleEngineError, match="truncated or half-written"):
        _ensure(onnx_file, builder, no_build=True)
    _ensure(onnx_file, builder)
    assert len(builder.calls) == 3
    assert json.loads(manifest.read_text())["engine_size"] == path.stat().st_size
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(IncompatibleEngineError, match="sha256"):
        _ensure(onnx_file, builder, no_build=True)


def test_failed_build_leaves_no_engine(onnx_file):
    def broken(*_args):
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        _ensure(onnx_file, broken)
    assert not list(onnx_file.parent.glob("*.engine")) and not list(onnx_file.parent.glob(".*.tmp"))


def test_timing_cache_keyed_by_trt_and_gpu(tmp_path, caplog):
    path = timing_cache_path(tmp_path, ENV)
    assert path.name == "timing-trt10.8.0-sm90-nvidia-h100-80gb-hbm3.cache"
    assert timing_cache_path(tmp_path, OTHER_GPU) != path
    save_timing_cache(path, ENV, b"cache-bytes")
    assert load_timing_cache(path, ENV) == b"cache-bytes"
    with caplog.at_level(logging.WARNING, logger="export.timing_cache"):
        assert load_timing_cache(path, OTHER_TRT) is None
    assert any("another TensorRT/GPU" in r.getMessage() and "10.3.0" in r.getMessage() for r in caplog.records)
    path.with_name(path.name + ".json").unlink()
    assert load_timing_cache(path, ENV) is None  # without a manifest nobody knows where it came from


def test_build_feeds_and_refreshes_timing_cache(onnx_file, tmp_path, caplog):
    builder = FakeBuilder()
    _ensure(onnx_file, builder)
    keyed = timing_cache_path(onnx_file.parent, ENV)
    assert builder.calls[0]["timing_cache"] is None and keyed.read_bytes() == b"TIMING-CACHE-1"
    _ensure(onnx_file, builder, network="unet_shallow")
    assert builder.calls[1]["timing_cache"] == b"TIMING-CACHE-1"  # the second build starts from the first's cache
    foreign = tmp_path / "foreign.cache"
    save_timing_cache(foreign, OTHER_GPU, b"A10G cache")
    with caplog.at_level(logging.WARNING, logger="export.timing_cache"):
        _ensure(onnx_file, builder, network="vae_decoder", timing_cache=foreign)
    assert builder.calls[2]["timing_cache"] is None  # ignored with a warning, build still succeeds
    assert any("ignoring timing cache" in r.getMessage() for r in caplog.records)
    assert keyed.read_bytes() == b"TIMING-CACHE-3"  # fresh cache written under the right key


def _race(onnx_path: str, log_file: str, result_file: str) -> None:
    builder = FakeBuilder(delay_s=0.5, log_file=Path(log_file))
    path = _ensure(Path(onnx_path), builder)
    Path(result_file).write_text(str(path))


def test_racing_builds_build_once_and_share_the_engine(onnx_file, tmp_path):
    log_file = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_race, args=(str(onnx_file), str(log_file), str(tmp_path / f"r{i}.txt"))) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log_file.read_text().split()) == 1  # one build; the losers waited and reused it
    results = {(tmp_path / f"r{i}.txt").read_text() for i in range(3)}
    assert len(results) == 1 and Path(results.pop()).exists()


def test_atomic_write_and_lock(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with file_lock(target):
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()

        def try_lock():
            try:
                with file_lock(target, timeout_s=0.3):
                    q.put("acquired")
            except Exception as exc:
                q.put(type(exc).__name__)

        p = ctx.Process(target=try_lock)
        p.start()
        p.join(10)
        assert q.get(timeout=5) == "EngineError"  # held by us: the other process times out
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_build_cli_without_tensorrt_raises_before_loading(capsys):
    from engine.cli import main
    from export.trt_env import trt_unavailable_reason

    if trt_unavailable_reason() is None:
        pytest.skip("TensorRT is available here")
    code = main(["build", "--model", "no-such-model", "--precision", "fp16"])
    assert code == BackendUnavailableError.exit_code
    assert "tensorrt" in capsys.readouterr().err


@pytest.mark.requires_trt
def test_real_trt_engine_matches_torch(tmp_path):
    from engine.backends.trt_backend import TrtExecutor
    from engine.models.vae import build_vae, tiny_vae_config
    from export import export_onnx, get_spec, wrap
    from export.specs import ShapeSettings
    from export.trt_env import detect_environment

    torch.manual_seed(0)
    vae = build_vae(tiny_vae_config()).cuda()
    onnx_path = export_onnx("vae_decoder", vae, tmp_path)
    geometry = geometry_of(vae=vae)
    shape = BuildShape(frames=4, latent_size=8)
    engine = ensure_engine("vae_decoder", onnx_path, tmp_path, geometry=geometry, shape=shape,
                           settings=BuildSettings(precision="fp16"), env=detect_environment())
    executor = TrtExecutor("vae_decoder", engine, geometry, torch.device("cuda"))
    feeds = get_spec("vae_decoder").sample_inputs(geometry, ShapeSettings(batch=3, height=8, width=8), device="cuda")
    got = executor(feeds)["images"].float()
    with torch.no_grad():
        want = wrap("vae_decoder", vae)(feeds["latents"])
    assert (got - want).abs().max().item() < 5e-2  # FP16 engine vs fp32 torch
    assert ensure_engine("vae_decoder", onnx_path, tmp_path, geometry=geometry, shape=shape,
                         settings=BuildSettings(precision="fp16"), env=detect_environment(), no_build=True) == engine
