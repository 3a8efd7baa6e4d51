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
    with pytest.raises(IncompatibleEngineError, match="sha256"):  # as `engine build --no-build` checks
        _ensure(onnx_file, builder, no_build=True, verify_sha256=True)


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]  # the lock's file went with the lock


def test_atomic_writes_get_a_normal_files_mode(tmp_path):
    """mkstemp's 0600 must not leak into artifacts, manifests and caches another user (or a container) reads."""
    import os

    old = os.umask(0o022)
    try:
        from export import locking

        mask = locking._UMASK
        target = atomic_write_bytes(tmp_path / "engine.onnx.json", b"{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


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


# ------------------------------------------------------------------ the executor's contexts, with a fake runtime
class _FakeContext:
    """Reads its inputs from and writes its outputs to the bound addresses, as TensorRT does (CPU memory here)."""

    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.shape_calls, self.device_memory = engine, {}, {}, [], None

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.profile
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        self.shape_calls.append(name)
        return True

    def get_tensor_shape(self, name):  # images = 8x the latents, 3 channels
        f, _, h, w = self.shapes["latents"]
        return (f, 3, 8 * h, 8 * w)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def set_device_memory(self, ptr, size):
        self.device_memory = (ptr, size)

    def execute_async_v3(self, stream):
        import ctypes

        def view(name, shape):
            count = int(torch.tensor(shape).prod())
            buffer = (ctypes.c_float * count).from_address(self.addresses[name])
            return torch.frombuffer(buffer, dtype=torch.float32, count=count).view(shape)

        latents = view("latents", self.shapes["latents"])
        images = view("images", self.get_tensor_shape("images"))
        images.copy_(latents[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3) * 2 + 1)
        self.engine.runs.append(self.shapes["latents"])
        return True


class _FakeEngine:
    num_io_tensors = 2
    device_memory_size_v2 = 4096

    def __init__(self, profile):
        self.profile, self.contexts, self.runs = profile, [], []

    def get_tensor_name(self, i):
        return ("latents", "images")[i]

    def get_tensor_dtype(self, name):
        return "f32"

    def create_execution_context(self, strategy=None):
        assert strategy == "user-managed"  # activation memory comes from the executor
        self.contexts.append(_FakeContext(self))
        return self.contexts[-1]


class _FakeTrt:
    float32, float16, int32, int64 = "f32", "f16", "i32", "i64"

    class Logger:
        WARNING = 1

        def __init__(self, level):
            pass

    class ExecutionContextAllocationStrategy:
        USER_MANAGED = "user-managed"

    def __init__(self, engine):
        self.engine = engine
        outer = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return outer.engine

        self.Runtime = Runtime


def test_trt_executor_gives_each_shape_its_own_context_set_once(tmp_path):
    """Alternating chunk lengths never re-shape a context (a captured CUDA graph would replay stale state)."""
    from engine.backends.trt_backend import TrtExecutor
    from engine.errors import InvalidInputError

    plan = tmp_path / "vae_decoder.engine"
    plan.write_bytes(b"plan")
    engine = _FakeEngine(profile=((1, 4, 4, 4), (16, 4, 8, 8)))
    executor = TrtExecutor("vae_decoder", plan, geometry_of(), torch.device("cpu"), runtime_module=_FakeTrt(engine))
    calls = [torch.randn(f, 4, 4, 4) for f in (16, 5, 16, 5, 3)]
    for latents in calls:
        out = executor({"latents": latents})["images"]
        want = latents[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3) * 2 + 1
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert executor.num_contexts == len(engine.contexts) == 3  # 16, 5 and 3 frames
    assert [c.shape_calls for c in engine.contexts] == [["latents"]] * 3  # each context shaped exactly once
    assert len({c.device_memory[0] for c in engine.contexts}) == 1  # one shared activation buffer
    first = executor({"latents": calls[0]})["images"]
    first.add_(1.0)  # returned tensors are copies: the next call cannot overwrite what a caller holds
    assert not torch.equal(first, executor({"latents": calls[0]})["images"])
    with pytest.raises(InvalidInputError, match="inside the engine's profile"):
        executor({"latents": torch.randn(17, 4, 4, 4)})


def test_builder_strong_typing_leaves_precision_to_the_graph_and_weak_typing_pins_norms():
    from types import SimpleNamespace

    from export.trt_builder import FP32_LAYER_TYPES, configure_precision, network_flags

    class Config:
        def __init__(self):
            self.flags = set()

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

    class Layer:
        def __init__(self, name, kind):
            self.name, self.type, self.num_outputs, self.precision, self.output_types = name, kind, 1, None, {}

        def set_output_type(self, index, dtype):
            self.output_types[index] = dtype

    trt = SimpleNamespace(
        __version__="10.8.0", float32="f32",
        NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
        BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32", OBEY_PRECISION_CONSTRAINTS="OBEY"),
        LayerType=SimpleNamespace(NORMALIZATION="norm", REDUCE="reduce", SOFTMAX="softmax", CONVOLUTION="conv"),
    )
    layers = [Layer("conv", "conv"), Layer("gn", "norm"), Layer("mean", "reduce"), Layer("attn", "softmax")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert network_flags(trt, BuildSettings()) == 1 << 1  # strongly typed
    strong = Config()
    assert configure_precision(trt, network, strong, BuildSettings(precision="fp16")) == []
    assert strong.flags == set() and all(layer.precision is None for layer in layers)  # the graph's casts decide
    weak = Config()
    pinned = configure_precision(trt, network, weak, BuildSettings(precision="fp16", typing="weak"))
    assert pinned == ["gn", "mean", "attn"] and len(FP32_LAYER_TYPES) == 3
    assert weak.flags == {"FP16", "OBEY"} and layers[1].output_types == {0: "f32"} and layers[0].precision is None
    assert network_flags(trt, BuildSettings(typing="weak")) == 0
    old = SimpleNamespace(**{**vars(trt), "NetworkDefinitionCreationFlag": SimpleNamespace(EXPLICIT_BATCH=0)})
    with pytest.raises(IncompatibleEngineError, match="strongly typed"):
        network_flags(old, BuildSettings())


def test_engine_key_records_typing_and_fp32_norms(onnx_file):
    base = expected_fields("unet", onnx_file, GEOMETRY, SHAPE, BuildSettings(), ENV)
    assert base["build_flags"]["typing"] == "strong" and base["build_flags"]["fp32_norms"] is True
    for other in (BuildSettings(typing="weak"), BuildSettings(fp32_norms=False)):
        assert engine_path(onnx_file.parent, expected_fields("unet", onnx_file, GEOMETRY, SHAPE, other, ENV)) != \
            engine_path(onnx_file.parent, base)


def test_strongly_typed_engine_needs_an_export_at_its_precision(onnx_file):
    from export.artifacts import write_manifest

    write_manifest(onnx_file, {"dtype": "fp32"})
    with pytest.raises(IncompatibleEngineError, match="expected an fp16 ONNX export, found fp32"):
        _ensure(onnx_file, FakeBuilder(), settings=BuildSettings(precision="fp16"))
    assert _ensure(onnx_file, FakeBuilder(), settings=BuildSettings(precision="fp32")).exists()


def test_plan_bytes_are_reread_only_when_size_or_mtime_changed(onnx_file):
    path = _ensure(onnx_file, FakeBuilder())
    stats = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stats.st_atime_ns, stats.st_mtime_ns))  # same size and mtime: the cheap check trusts it
    assert _ensure(onnx_file, FakeBuilder(), no_build=True) == path
    with pytest.raises(IncompatibleEngineError, match="sha256"):  # `engine build --no-build` re-reads the bytes
        _ensure(onnx_file, FakeBuilder(), no_build=True, verify_sha256=True)
