"""Backends behind one interface: request parsing, R18 (no silent fallback), auto's one log line, parity."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.backends import (
    BACKENDS,
    BackendOptions,
    availability,
    create_runners,
    parse_backend_request,
    select_unet_runner,
    unavailable_reason,
)
from engine.errors import BackendUnavailableError, IncompatibleEngineError, InvalidInputError

pytest.importorskip("onnxruntime")

ATOL = 1e-4  # fp32 ONNX Runtime vs eager PyTorch on the tiny model


@pytest.fixture(scope="module")
def models():
    from engine.weights import load_models

    return load_models("tiny-random")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_random_onnx):
    """A folder holding this run's `engine export` of tiny-random (conftest.tiny_random_onnx) except the audio
    encoder: `ort_runners` reuses the current files and exports the missing one itself."""
    import shutil

    folder = tmp_path_factory.mktemp("artifacts")
    for path in tiny_random_onnx.iterdir():
        if not path.name.startswith(("audio_encoder", "engine-config")):
            shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def ort_runners(models, artifacts):
    """Explicit onnxruntime: reuses the current exports in `artifacts` and exports what is missing into it."""
    current = {p.name: p.stat().st_mtime_ns for p in artifacts.glob("*.onnx")}
    assert "audio_encoder.onnx" not in current
    runners = create_runners(models, "onnxruntime", options=BackendOptions(artifact_dir=artifacts))
    assert {n: (artifacts / n).stat().st_mtime_ns for n in current} == current, "current exports were reused"
    assert (artifacts / "audio_encoder.onnx").is_file(), "the missing network was exported"
    return runners


@pytest.fixture(scope="module")
def torch_runners(models):
    return create_runners(models, "torch")


def _unet_inputs(batch=2, frames=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 13, frames, size, size, generator=g)
    ehs = torch.randn(batch * frames, 50, 384, generator=g)
    return sample, ehs


def test_parse_backend_request():
    assert parse_backend_request("auto") == {"unet": "auto", "vae": "auto", "audio": "auto"}
    assert parse_backend_request("TensorRT") == {"unet": "tensorrt", "vae": "tensorrt", "audio": "tensorrt"}
    assert parse_backend_request("unet=tensorrt, vae=torch") == {"unet": "tensorrt", "vae": "torch", "audio": "auto"}
    assert parse_backend_request("audio_encoder=onnxruntime")["audio"] == "onnxruntime"
    with pytest.raises(InvalidInputError, match="backend: expected one of"):
        parse_backend_request("trt2")
    with pytest.raises(InvalidInputError, match="backend group"):
        parse_backend_request("text=torch")


def test_availability_reports_reason_for_each_backend():
    report = availability("cpu")
    assert set(BACKENDS) <= set(report)
    assert report["torch"] == {"available": True, "why_not": None}
    assert report["tensorrt"]["available"] is False and "CUDA" in report["tensorrt"]["why_not"]
    assert report["onnxruntime"]["available"] is True


def test_explicit_tensorrt_never_falls_back(models):
    with pytest.raises(BackendUnavailableError, match="unet backend tensorrt: expected it to run on cpu"):
        create_runners(models, "tensorrt")
    with pytest.raises(BackendUnavailableError):
        select_unet_runner("tensorrt", models)
    if not torch.cuda.is_available():
        assert unavailable_reason("tensorrt", "cuda") is not None


def test_explicit_onnxruntime_without_artifacts_and_no_build_raises(models, tmp_path):
    with pytest.raises(IncompatibleEngineError, match=r"not exported yet \(run `engine export`\)"):
        create_runners(models, "vae=onnxruntime,unet=torch,audio=torch",
                       options=BackendOptions(artifact_dir=tmp_path, allow_build=False))


def test_auto_without_artifacts_uses_torch_with_one_warning(models, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="engine.backends.select"):
        runners = create_runners(models, "auto", options=BackendOptions(artifact_dir=tmp_path))
    assert runners.choice == {"unet": "torch", "vae": "torch", "audio": "torch"}
    records = [r for r in caplog.records if r.name == "engine.backends.select"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert message.count("not exported yet (run `engine export`)") == 3  # one reason per group, one line
    assert all(f"onnxruntime ({group})" in message for group in ("unet", "vae", "audio"))
    assert not any(tmp_path.iterdir())  # auto never exports or builds


def test_onnxruntime_unet_runner_matches_torch_full_shallow_and_forward(ort_runners, torch_runners, models):
    sample, ehs = _unet_inputs()
    t = torch.tensor([981, 981])
    noise, deep = ort_runners.unet.forward_full(sample, t, ehs)
    ref_noise, ref_deep = torch_runners.unet.forward_full(sample, t, ehs)
    assert deep.shape == (2, 32, 3, 8, 8)
    torch.testing.assert_close(noise, ref_noise, rtol=0, atol=ATOL)
    torch.testing.assert_close(deep, ref_deep, rtol=0, atol=ATOL)
    with torch.no_grad():  # the torch runner is the module itself; scalar timesteps work too
        torch.testing.assert_close(ref_noise, models.unet(sample, torch.tensor(981), ehs), rtol=0, atol=0)
    shallow = ort_runners.unet.forward_shallow(sample, 500, ehs, deep)
    torch.testing.assert_close(shallow, torch_runners.unet.forward_shallow(sample, 500, ehs, ref_deep), rtol=0, atol=ATOL)
    assert not torch.allclose(shallow, noise, atol=1e-3)  # the timestep really matters
    torch.testing.assert_close(ort_runners.unet(sample, 981, ehs), noise, rtol=0, atol=0)


def test_onnxruntime_runner_rejects_bad_shapes_with_expected_and_found(ort_runners):
    sample, _ = _unet_inputs()
    with pytest.raises(InvalidInputError, match=r"encoder_hidden_states shape: expected \(6, 50, 384\)"):
        ort_runners.unet.forward(sample, 981, torch.zeros(4, 50, 384))


def test_onnxruntime_vae_and_audio_match_torch(ort_runners, torch_runners, models):
    from engine.models.vae import vae_decode, vae_encode

    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    mean, std = ort_runners.vae.posterior(pixels)
    ref_mean, ref_std = torch_runners.vae.posterior(pixels)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=ATOL)
    torch.testing.assert_close(std, ref_std, rtol=0, atol=ATOL)
    latents = ort_runners.vae.encode(pixels, generator=torch.Generator().manual_seed(5))
    official = vae_encode(models.vae, pixels, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(latents, official, rtol=0, atol=ATOL)
    torch.testing.assert_close(ort_runners.vae.decode_latents(latents), vae_decode(models.vae, latents), rtol=0, atol=ATOL)
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ort_runners.audio_encoder(mel), models.audio_encoder(mel), rtol=0, atol=ATOL)


def test_auto_uses_existing_exports_and_per_group_choice(ort_runners, models, artifacts, caplog):
    with caplog.at_level(logging.INFO, logger="engine.backends.select"):
        runners = create_runners(models, "auto", options=BackendOptions(artifact_dir=artifacts))
    assert runners.choice == {"unet": "onnxruntime", "vae": "onnxruntime", "audio": "onnxruntime"}
    assert [r.levelno for r in caplog.records if r.name == "engine.backends.select"] == [logging.INFO]
    mixed = create_runners(models, "unet=onnxruntime,vae=torch,audio=torch", options=BackendOptions(artifact_dir=artifacts))
    assert mixed.choice == {"unet": "onnxruntime", "vae": "torch", "audio": "torch"}
    assert mixed.unet.backend == "onnxruntime" and mixed.vae.backend == "torch"


def test_onnxruntime_runner_drives_the_deepcache_ddim_loop(ort_runners, models):
    from engine.scheduler import denoise

    g = torch.Generator().manual_seed(3)
    shape = (1, 4, 2, 8, 8)
    latents, masked, ref = (torch.randn(shape, generator=g) for _ in range(3))
    mask = (torch.rand((1, 1, 2, 8, 8), generator=g) > 0.5).float()
    audio = torch.randn(2, 50, 384, generator=g)
    kwargs = dict(steps=3, guidance_scale=1.5, deepcache_interval=2)
    got = denoise(ort_runners.unet, latents, mask, masked, ref, audio, **kwargs)
    want = denoise(models.unet, latents, mask, masked, ref, audio, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_compile_backend_matches_torch(models, torch_runners):
    runners = create_runners(models, "vae=compile,unet=torch,audio=torch")
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(runners.vae.decode(z), torch_runners.vae.decode(z), rtol=0, atol=ATOL)


def test_engine_bench_cli_reports_every_backend(tmp_path, capsys):
    import json

    from engine.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--model", "tiny-random", "--networks", "audio_encoder", "--device", "cpu",
                 "--backends", "torch,onnxruntime,tensorrt", "--iters", "1", "--warmup", "0",
                 "--artifacts", str(tmp_path / "art"), "--out", str(out)])
    assert code == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["torch"]["speedup_vs_torch"] == 1.0 and rows["torch"]["median_ms"] > 0
    assert rows["onnxruntime"]["max_abs_diff_vs_torch"] < ATOL
    assert rows["onnxruntime"]["throughput_items_per_s"] > 0
    assert "CUDA" in rows["tensorrt"]["skipped"]  # unavailable backends are reported with the reason
    assert "| audio_encoder | onnxruntime |" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int64, torch.float16, torch.float32])
def test_onnxruntime_binding_takes_every_mapped_dtype(dtype, tmp_path):
    """bf16 and int64 tensors bind without numpy (which has no bfloat16): the old maps raised KeyError."""
    import onnx
    import onnxruntime
    from onnx import helper

    from engine.backends.ort_backend import _ORT_TO_TORCH, _TORCH_TO_ONNX, run_bound

    elem = _TORCH_TO_ONNX[dtype]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", elem, [2, 3])],
                              [helper.make_tensor_value_info("y", elem, [2, 3])])
    path = tmp_path / "identity.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert _ORT_TO_TORCH[session.get_inputs()[0].type] == dtype
    x = (torch.arange(6).reshape(2, 3) * 3 - 4).to(dtype)
    y = torch.empty_like(x)
    run_bound(session, {"x": x}, {"y": y}, torch.device("cpu"))
    assert torch.equal(x, y)


def test_bf16_on_onnxruntime_is_a_typed_error_before_any_export(tmp_path):
    from engine.weights import load_models

    bf16 = load_models("tiny-random", dtype=torch.bfloat16)
    with pytest.raises(BackendUnavailableError, match="bf16 graph"):
        create_runners(bf16, "vae=onnxruntime,unet=torch,audio=torch", options=BackendOptions(artifact_dir=tmp_path))
    assert not any(tmp_path.iterdir())
    runners = create_runners(bf16, "auto", options=BackendOptions(artifact_dir=tmp_path))  # opted in: rejected, said why
    assert runners.choice["vae"] == "torch" and runners.choice["unet"] == "torch"
