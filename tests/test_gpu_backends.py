"""The CUDA and TensorRT paths on a GPU (skipped without one): precision, executors, official-size engines.

Nothing here needs the golden fixtures, so `benchmarks/gpu_check.py` runs every test on a GPU machine,
where only the repository travels. The TensorRT tests build official-size engines (minutes each): they are
`slow` as well, and run on a user's machine with TensorRT (`pip install -e ".[trt]"`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
REL_TOL_FP16 = 2e-2  # fp16 engines vs fp32 torch: ||a - b|| / ||b|| (random weights, official sizes)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def tiny_cuda():
    from engine.weights import load_models

    return load_models("tiny-random", device="cuda", dtype=torch.float16)


@pytest.mark.requires_cuda
def test_whisper_encodes_in_the_run_dtype_on_cuda(tiny_cuda):
    from engine.audio import audio_features
    from engine.backends import create_runners

    runners = create_runners(tiny_cuda, "torch", device="cuda")
    assert runners.settings["whisper_dtype"] == "float16" and tiny_cuda.audio_encoder.compute_dtype == torch.float16
    samples = 0.1 * torch.randn(16000 * 3, generator=torch.Generator().manual_seed(0))
    gpu = audio_features(samples, runners.audio_encoder)
    explicit = audio_features(samples, tiny_cuda.audio_encoder, dtype=torch.float16)  # the official fp16 encode
    torch.testing.assert_close(gpu.float(), explicit.float(), rtol=0, atol=0)
    tiny_cuda.audio_encoder.compute_dtype = None
    cpu = audio_features(samples, tiny_cuda.audio_encoder.to("cpu"))
    tiny_cuda.audio_encoder.to("cuda")
    assert cpu.dtype == torch.float32 and _rel(gpu, cpu) < 1e-2


@pytest.mark.requires_cuda
def test_vae_channels_last_matches_nchw(tiny_cuda):
    import copy

    from engine.pipeline.device import DeviceOptions, apply_device_options

    z = torch.randn(4, 4, 32, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        want = tiny_cuda.vae.decode(z).sample
        other = copy.copy(tiny_cuda)
        other.vae = copy.deepcopy(tiny_cuda.vae)
        applied = apply_device_options(other, "cuda", torch.float16, DeviceOptions(vae_channels_last=True))
        got = other.vae.decode(z).sample
    assert applied["vae_channels_last"] and other.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(got).all() and _rel(got, want) < 1e-2


@pytest.mark.requires_cuda
def test_trt_executor_replays_one_graph_per_shape_with_its_own_context(tmp_path):
    """The executor's per-shape contexts, buffers and CUDA graphs on a real GPU (the engine is a fake whose
    "kernels" are torch ops on views of the bound addresses). The views are made from the raw addresses through a
    version-2 `__cuda_array_interface__` (no stream field): torch never synchronises on another library's stream
    while the executor captures its CUDA graph, which would fail the capture and leave the CUDA context unusable
    for the tests after this one (CuPy arrays carry their current stream and made torch wait on it)."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_trt_build import _FakeContext, _FakeEngine, _FakeTrt
    finally:
        sys.path.pop(0)
    from engine.backends.trt_backend import TrtExecutor
    from export.wrappers import geometry_of

    class CudaContext(_FakeContext):
        def execute_async_v3(self, stream):  # torch kernels on the capturing stream: recorded into the graph
            def view(name, shape):
                return torch.as_tensor(_RawCudaFloats(self.addresses[name], shape), device="cuda")

            latents, images = view("latents", self.shapes["latents"]), view("images", self.get_tensor_shape("images"))
            images.copy_(latents[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3) * 2 + 1)
            return True

    class CudaEngine(_FakeEngine):
        def create_execution_context(self, strategy=None):
            self.contexts.append(CudaContext(self))
            return self.contexts[-1]

    plan = tmp_path / "vae_decoder.engine"
    plan.write_bytes(b"plan")
    engine = CudaEngine(profile=((1, 4, 4, 4), (16, 4, 8, 8)))
    executor = TrtExecutor("vae_decoder", plan, geometry_of(), torch.device("cuda"), runtime_module=_FakeTrt(engine))
    for f in (16, 5, 16, 5, 16):
        latents = torch.randn(f, 4, 4, 4, device="cuda")
        want = latents[:, :3].repeat_interleave(8, dim=2).repeat_interleave(8, dim=3) * 2 + 1
        torch.testing.assert_close(executor({"latents": latents})["images"], want, rtol=0, atol=0)
    assert executor.cuda_graphs and executor.num_contexts == 2
    assert all(slot.graph is not None for slot in executor._slots.values())


class _RawCudaFloats:
    """float32 device memory at `address` seen through `__cuda_array_interface__` version 2 (no stream to sync on)."""

    def __init__(self, address: int, shape) -> None:  # noqa: ANN001
        self.__cuda_array_interface__ = {"shape": tuple(int(d) for d in shape), "typestr": "<f4",
                                         "data": (int(address), False), "version": 2, "strides": None}


@pytest.mark.requires_cuda
def test_onnxruntime_cuda_binds_device_tensors(tiny_cuda, tmp_path):
    from engine.backends import EngineConfig, create_runners, unavailable_reason

    reason = unavailable_reason("onnxruntime", "cuda")
    if reason is not None:
        pytest.skip(reason)
    ort = create_runners(tiny_cuda, "vae=onnxruntime,unet=torch,audio=torch", device="cuda",
                         engine=EngineConfig(artifact_dir=tmp_path))
    eager = create_runners(tiny_cuda, "torch", device="cuda")
    z = torch.randn(3, 4, 32, 32, device="cuda", dtype=torch.float16)
    got, want = ort.vae.decode(z), eager.vae.decode(z)
    assert got.device.type == "cuda" and got.dtype == torch.float16
    assert _rel(got, want) < REL_TOL_FP16


@pytest.mark.requires_cuda
def test_compile_on_cuda_with_graphs_matches_eager_across_calls(tiny_cuda):
    from engine.backends import create_runners

    compiled = create_runners(tiny_cuda, "vae=compile,unet=torch,audio=torch", device="cuda")
    eager = create_runners(tiny_cuda, "torch", device="cuda")
    first_in, second_in = (torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16) for _ in range(2))
    first = compiled.vae.decode(first_in)
    second = compiled.vae.decode(second_in)  # a CUDA-graph replay must not overwrite `first`
    assert _rel(first, eager.vae.decode(first_in)) < 1e-2 and _rel(second, eager.vae.decode(second_in)) < 1e-2


# ------------------------------------------------------------------ TensorRT at official size (random weights)
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from random_models import official_random_models
    finally:
        sys.path.remove(str(BENCHMARKS))
    half = official_random_models(device="cuda", dtype=torch.float16, resolution=512)
    full = official_random_models(device="cuda", dtype=torch.float32, resolution=512)  # same seed: same weights
    return half, full, tmp_path_factory.mktemp("official-engines")


def _official_feeds(network: str, seed: int = 0) -> dict[str, torch.Tensor]:
    from export.specs import ShapeSettings, get_spec
    from export.wrappers import geometry_of

    settings = ShapeSettings(batch=2, frames=16, height=64, width=64, length=3000)
    if network.startswith("vae"):
        settings = ShapeSettings(batch=16, height=64, width=64)
    elif network == "audio_encoder":
        settings = ShapeSettings(batch=1, length=3000)
    return get_spec(network).sample_inputs(geometry_of(), settings, device="cuda", seed=seed)


@pytest.mark.requires_trt
@pytest.mark.slow
@pytest.mark.parametrize("network", ["unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder"])
def test_official_size_engine_tracks_torch_fp32_and_is_reused_without_building(official, network):
    from dataclasses import replace

    from engine.backends.base import run_executor
    from engine.backends.config import EngineConfig
    from engine.backends.select import BackendContext, make_executor
    from engine.pipeline.device import apply_device_options

    half, full, folder = official
    apply_device_options(half, "cuda", torch.float16)  # whisper in fp16 on CUDA, as a run has it
    config = EngineConfig(artifact_dir=folder, frames=16, batch=2)
    ctx = BackendContext.of(half, torch.device("cuda"), config)
    feeds = _official_feeds(network)
    if network == "unet_shallow":
        reference_full = make_executor("torch", "unet", BackendContext.of(full, torch.device("cuda"), config), allow_build=False)
        feeds["deep_feature"] = reference_full({k: v for k, v in feeds.items() if k != "deep_feature"})["deep_feature"]
    engine = make_executor("tensorrt", network, ctx, allow_build=True)
    got = run_executor(engine, feeds, torch.float32, torch.device("cuda"))
    reference = make_executor("torch", network, BackendContext.of(full, torch.device("cuda"), config), allow_build=False)
    want = run_executor(reference, feeds, torch.float32, torch.device("cuda"))
    for name in want:
        assert torch.isfinite(got[name]).all(), name
        assert _rel(got[name], want[name]) < REL_TOL_FP16, (name, _rel(got[name], want[name]))
    built = engine.engine_path.stat().st_mtime_ns
    again = make_executor("tensorrt", network, BackendContext.of(half, torch.device("cuda"),
                                                                 replace(config, allow_build=False)), allow_build=False)
    assert again.engine_path == engine.engine_path and again.engine_path.stat().st_mtime_ns == built  # not rebuilt
    reused = run_executor(again, feeds, torch.float32, torch.device("cuda"))
    for name in want:
        torch.testing.assert_close(reused[name], got[name], rtol=0, atol=0)
