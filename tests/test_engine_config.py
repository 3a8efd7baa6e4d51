"""One engine configuration: build/export register what they made, run finds it, auto never changes unasked (14.6)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.backends import EngineConfig, create_runners, describe_choice, resolve_engine_config
from engine.backends.config import (
    DIR_CONFIG_FILE,
    bench_artifact_dir,
    default_artifact_dir,
    register_artifacts,
    registered_artifact_dir,
    registry_path,
)
from engine.backends.select import BackendContext
from engine.errors import IncompatibleEngineError, InvalidInputError
from export.engines import ensure_engine
from export.trt_env import TrtEnvironment

ENV = TrtEnvironment(trt_version="10.8.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private engine cache: the registry and digests of these tests never touch the user's."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LATENTSYNC_ENGINE_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def models():
    from engine.weights import load_models

    return load_models("tiny-random")


def _fake_build(onnx_path, profile, settings, timing_cache):
    return b"PLAN" + Path(onnx_path).read_bytes()[:64] + repr(sorted(profile.items())).encode(), b"CACHE"


def test_defaults_are_not_opted_in_and_registry_supplies_folder_and_profile(cache, tmp_path):
    plain = resolve_engine_config("tiny-random")
    assert plain.artifact_dir is None and not plain.artifacts_opted_in
    folder = tmp_path / "engines"
    folder.mkdir()
    register_artifacts("tiny-random", folder, written_by="engine build", section="tensorrt",
                       values={**replace(EngineConfig(), frames=8, batch=1).profile(), "networks": ["unet"]})
    assert registered_artifact_dir("tiny-random") == folder.resolve()
    assert json.loads(registry_path().read_text())["models"]["tiny-random"]["artifact_dir"] == str(folder.resolve())
    resolved = resolve_engine_config("tiny-random")
    assert (resolved.artifact_dir, resolved.frames, resolved.batch) == (folder.resolve(), 8, 1)
    assert resolved.artifacts_opted_in
    assert resolve_engine_config("latentsync-1.6").artifact_dir is None  # other models are not affected
    explicit = tmp_path / "mine"
    assert resolve_engine_config("tiny-random", EngineConfig(artifact_dir=explicit)).artifact_dir == explicit
    (folder / DIR_CONFIG_FILE).unlink()
    folder.rmdir()
    assert registered_artifact_dir("tiny-random") is None  # a deleted folder is not offered


def test_engine_built_with_nondefault_out_frames_batch_is_found_by_run(cache, tmp_path, models):
    """`engine build --out DIR --frames 8 --batch 1`, then a run resolves the same engine key (it never did)."""
    out = tmp_path / "custom-out"
    out.mkdir()
    build_config = EngineConfig(artifact_dir=out, frames=8, batch=1)
    build_ctx = BackendContext.of(models, torch.device("cpu"), build_config)
    onnx_path = out / "vae_decoder.onnx"
    onnx_path.write_bytes(b"an exported graph")  # only the builder is faked; keys, manifests and lookup are real
    built = ensure_engine("vae_decoder", onnx_path, out, geometry=build_ctx.geometry, shape=build_ctx.build_shape(),
                          settings=build_ctx.build_settings("vae_decoder"), env=ENV, build_fn=_fake_build)
    register_artifacts(models.name, out, written_by="engine build", section="tensorrt",
                       values={**build_config.profile(), "networks": ["vae_decoder"]})

    run_ctx = BackendContext.of(models, torch.device("cpu"), resolve_engine_config(models.name))
    assert run_ctx.artifact_dir == out.resolve() and run_ctx.build_shape() == build_ctx.build_shape()
    found = ensure_engine("vae_decoder", run_ctx.artifact_dir / onnx_path.name, run_ctx.artifact_dir,
                          geometry=run_ctx.geometry, shape=run_ctx.build_shape(),
                          settings=run_ctx.build_settings("vae_decoder"), env=ENV, no_build=True)
    assert found.resolve() == built.resolve()
    stale = BackendContext.of(models, torch.device("cpu"), EngineConfig(artifact_dir=out))  # the defaults: 16 x 2
    with pytest.raises(IncompatibleEngineError, match="--no-build forbids rebuilding"):
        ensure_engine("vae_decoder", onnx_path, out, geometry=stale.geometry, shape=stale.build_shape(),
                      settings=stale.build_settings("vae_decoder"), env=ENV, no_build=True)


def test_bench_artifacts_never_change_auto(cache, models, caplog):
    from engine.cli import main

    code = main(["bench", "--model", "tiny-random", "--networks", "audio_encoder", "--device", "cpu",
                 "--backends", "torch,onnxruntime", "--iters", "1", "--warmup", "0",
                 "--out", str(cache / "bench.json")])
    assert code == 0
    assert list(bench_artifact_dir("tiny-random").glob("audio_encoder*.onnx"))  # the benchmark made files...
    assert not registry_path().exists()  # ...and registered nothing
    with caplog.at_level(logging.INFO, logger="engine.backends.select"):
        runners = create_runners(models, "auto")
    assert runners.choice == {"unet": "torch", "vae": "torch", "audio": "torch"}
    (record,) = [r for r in caplog.records if r.name == "engine.backends.select"]
    assert record.levelno == logging.INFO and "no built artifacts registered" in record.getMessage()
    assert runners.settings["backends"] == runners.choice and runners.settings["artifacts_opted_in"] is False


def test_engine_export_registers_and_auto_then_uses_it_per_group(cache, models, caplog):
    from engine.cli import main

    code = main(["export", "--model", "tiny-random", "--device", "cpu", "--networks", "audio_encoder"])
    assert code == 0
    folder = default_artifact_dir("tiny-random")
    assert registered_artifact_dir("tiny-random") == folder.resolve()
    assert json.loads((folder / DIR_CONFIG_FILE).read_text())["onnx"]["networks"] == ["audio_encoder"]
    with caplog.at_level(logging.INFO, logger="engine.backends.select"):
        runners = create_runners(models, "auto")
    assert runners.choice == {"unet": "torch", "vae": "torch", "audio": "onnxruntime"}
    (record,) = [r for r in caplog.records if r.name == "engine.backends.select"]
    assert record.levelno == logging.WARNING  # opted in, but unet/vae were not exported: say why, once
    assert "not exported yet" in record.getMessage()
    assert describe_choice(runners.choice) == "unet=torch vae=torch audio=onnxruntime"
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        torch.testing.assert_close(runners.audio_encoder(mel), models.audio_encoder(mel), rtol=0, atol=1e-4)


def test_weights_key_reads_each_checkpoint_once(cache, models, monkeypatch):
    from export import artifacts

    reads: list[str] = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda path: reads.append(Path(path).name) or real(path))
    monkeypatch.setattr(artifacts, "_digest_memo", {})
    key = BackendContext.of(models, torch.device("cpu"), EngineConfig()).weights_key("unet")
    assert key.startswith("files:") and reads == ["latentsync_unet.pt"]
    monkeypatch.setattr(artifacts, "_digest_memo", {})  # a new process: only the digest cache file is left
    assert BackendContext.of(models, torch.device("cpu"), EngineConfig()).weights_key("unet") == key
    assert reads == ["latentsync_unet.pt"]  # trusted by (path, size, mtime), not re-read
    assert BackendContext.of(models, torch.device("cpu"), EngineConfig()).weights_key("vae") != key


def test_compile_mode_follows_the_cuda_graph_option():
    assert EngineConfig().compile_mode_for("cuda") == "reduce-overhead"
    assert EngineConfig().compile_mode_for("cpu") == "default"
    assert EngineConfig(compile_cuda_graphs=False).compile_mode_for("cuda") == "default"
    assert EngineConfig(compile_mode="max-autotune").compile_mode_for("cuda") == "max-autotune"
    with pytest.raises(InvalidInputError, match="compile mode without CUDA graphs"):
        EngineConfig(compile_mode="reduce-overhead", compile_cuda_graphs=False).compile_mode_for("cuda")
    with pytest.raises(InvalidInputError, match="compile mode"):
        EngineConfig(compile_mode="fastest")
    with pytest.raises(InvalidInputError, match="frames"):
        EngineConfig(frames=0)


def test_run_cli_takes_artifacts():
    from engine.backends.config import engine_config_from_args
    from engine.cli import build_parser

    args = build_parser().parse_args(["run", "--video", "v.mp4", "--audio", "a.wav", "-o", "o.mp4",
                                      "--artifacts", "/tmp/x"])
    assert engine_config_from_args(args) == EngineConfig(artifact_dir=Path("/tmp/x"))
    plain = build_parser().parse_args(["run", "--video", "v.mp4", "--audio", "a.wav", "-o", "o.mp4"])
    assert engine_config_from_args(plain) is None
