"""The modelled device: explicit only, costed by FLOPs, and the real control flow around it.

A modelled run of a job must produce what a real run of the same job produces, except the pixels of the mouth:
the same number of frames, the same timestamps and the same audio (the engine core, chunking, restore and encode
are the real ones; only the networks are replaced by sleeps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SECONDS = 0.6  # 15 frames of speech: one full chunk of 16 is cut to 15 (a tail shape for the executors too)
FAST = dict(steps=1, guidance=1.0, deepcache=0, seed=7)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def clip(media, tmp_path_factory):
    from engine.media import cut_clip, load_audio, write_wav

    root = tmp_path_factory.mktemp("clip")
    video = root / "clip.mp4"
    cut_clip(media / "demo1_video.mp4", video, seconds=SECONDS, size=(540, 960))
    wav = write_wav(root / "speech.wav", load_audio(media / "demo1_audio.wav")[: int(SECONDS * 16000)])
    return video, wav


def _pts_and_audio(path: Path) -> tuple[list[int], np.ndarray]:
    import av

    from engine.media import load_audio

    with av.open(str(path)) as container:
        pts = [int(f.pts) for f in container.decode(video=0)]
    return pts, load_audio(path)


def test_modelled_is_explicit_only():
    from engine.backends.select import AUTO_ORDER, BACKENDS, parse_backend_request, unavailable_reason

    assert all("modelled" not in order for order in AUTO_ORDER.values()) and "modelled" not in BACKENDS
    assert set(parse_backend_request("auto").values()) == {"auto"}
    assert set(parse_backend_request("modelled").values()) == {"modelled"}
    assert unavailable_reason("modelled", "cpu") is None
    assert "host" in unavailable_reason("modelled", "cuda")


def test_executor_sleeps_the_cost_model_time_and_returns_shapes():
    from engine.modelled.cost import predict_ms
    from engine.modelled.executor import ModelledDevice, ModelledExecutor, ModelledOptions
    from engine.models import LatentSyncUNet, tiny_unet_config

    device = ModelledDevice(ModelledOptions(profile="l4", cpu_scale=2.0, network_sizes="loaded"))
    with torch.device("meta"):
        unet = LatentSyncUNet.from_config(tiny_unet_config())
    executor = ModelledExecutor("unet", unet, device)
    feeds = {"sample": torch.randn(2, 13, 4, 8, 8), "timestep": torch.ones(2),
             "encoder_hidden_states": torch.randn(8, 50, unet.config["cross_attention_dim"])}
    out = executor(feeds)
    assert out["noise_pred"].shape == (2, 4, 4, 8, 8) and out["deep_feature"].shape[:3] == (2, 32, 4)
    assert not out["noise_pred"].any() and out["noise_pred"].dtype == torch.float32
    executor(feeds)  # second call: the FLOPs come from the cache
    report = device.report()
    tally = report["networks"]["unet"]
    assert report["modelled"] is True and tally["calls"] == 2 and tally["flops"] > 0
    ms = predict_ms(device.profile, "unet", tally["flops"] / 2, "fp16")
    assert tally["modelled_ms"] == pytest.approx(2 * ms, rel=1e-2)
    assert tally["slept_s"] >= 2 * 2.0 * ms / 1000 * 0.99  # slept cost x cpu_scale


def test_official_sizes_cost_the_real_unet_without_weights():
    from engine.modelled.executor import ModelledDevice, ModelledOptions, official_meta_module

    unet = official_meta_module("unet")  # what official_meta_models(256 or 512) puts in LoadedModels.unet
    assert all(p.is_meta for p in unet.parameters())
    device = ModelledDevice(ModelledOptions(profile="h200"))
    device.attach("unet", unet)
    shape = device.shape_of("unet", {"sample": torch.empty(2, 13, 4, 32, 32), "timestep": torch.empty(2),
                                     "encoder_hidden_states": torch.empty(8, 50, 384)})
    # the official U-Net at 256 px: about 0.26 TFLOP per row and frame for a full pass (4x that at 512 px;
    # benchmarks/results/system_modelled_h200.json has the per-frame totals of each recipe)
    assert 1e12 < shape.flops < 5e12, shape.flops
    assert shape.outputs["noise_pred"][0] == (2, 4, 4, 32, 32)


def test_modelled_run_has_the_frames_timestamps_and_audio_of_a_real_run(clip, tmp_path, monkeypatch):
    from engine.backends import EngineConfig
    from engine.modelled.executor import ModelledOptions
    from engine.pipeline.device import choose_placement
    from engine.pipeline.sdk import LipSync
    from engine.weights import load_models

    video, wav = clip
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import random_models  # the micro model: the tiny-random U-Net at 32 channels, an 8-channel VAE (fast real run)

    models = load_models(str(random_models.write_micro_model(tmp_path / "micro")), device="cpu")
    placement = choose_placement("cpu", "fp32")
    outputs = {}
    for backend in ("torch", "modelled"):
        engine = EngineConfig(modelled=ModelledOptions(profile="h100", network_sizes="loaded"))
        with LipSync(models, placement, face="mediapipe", backend=backend, engine=engine) as sync:
            result = sync(video, wav, tmp_path / f"{backend}.mp4", **FAST)
        outputs[backend] = (result, *_pts_and_audio(tmp_path / f"{backend}.mp4"))
    real, modelled = outputs["torch"], outputs["modelled"]
    assert modelled[0].engine_settings["modelled"] is True and "modelled" not in real[0].engine_settings
    assert modelled[0].backends == {"unet": "modelled", "vae": "modelled", "audio": "modelled"}
    assert modelled[0].num_frames == real[0].num_frames == 15
    assert modelled[0].audio_samples == real[0].audio_samples
    assert modelled[1] == real[1]  # timestamps
    assert np.array_equal(modelled[2], real[2])  # the muxed audio


def test_system_benchmark_smoke(tmp_path, media):
    """benchmarks/system.py end to end at its smallest setting (the committed JSON comes from --quick)."""
    import json
    import subprocess

    out = tmp_path / "system.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "system.py"), "--smoke", "--profile", "h200", "--cpu-scale", "8",
                    "--video", str(media / "demo1_video.mp4"), "--out", str(out)], check=True, timeout=600,
                   cwd=BENCHMARKS.parent)
    report = json.loads(out.read_text())
    assert report["modelled"] is True and report["scenarios"]
    for row in report["scenarios"]:
        assert row["modelled"] is True and row["profile"] == "h200" and row["frames"] > 0
        assert row["projected_frames_per_s"] == pytest.approx(row["measured_frames_per_s"] * row["cpu_scale"], rel=0.01)
        assert 0 < row["device_busy_fraction"] <= 1.05 and row["cores_used"] > 0 and row["bound_stage"]
        if row["kind"] == "jobs" or row["live"]["source"] == "video":
            assert row["cpu_ms_per_frame"]["decode"] > 0
    live = {row["live"]["source"]: row for row in report["scenarios"] if row["kind"] == "streams"}
    assert set(live) == {"video", "avatar"}
    avatar = live["avatar"]  # looped from a prepared avatar: its preparation is timed apart, no decode or faces
    assert avatar["avatar_prepare"][0]["frames"] == 8 and avatar["avatar_prepare"][0]["wall_s"] > 0
    assert avatar["cpu_ms_per_frame"]["face"] in (0, None)
    for row in live.values():  # the first frame's latency, broken down: the parts add up to it
        (parts,) = row["live"]["first_frame_breakdown_s"]
        assert parts["speech"] > 0 and parts["device"] > 0 and parts["restore"] > 0
        assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], abs=0.01)
        assert parts["total"] == pytest.approx(row["live"]["first_frame_latency_s"][0], abs=0.15)
    assert (tmp_path / "system.png").exists()


def test_encode_preset_is_checked_before_any_work(tmp_path):
    from engine.errors import InvalidInputError
    from engine.pipeline.sdk import DEFAULT_ENCODE_PRESET, check_encode_preset

    assert DEFAULT_ENCODE_PRESET == "medium"  # offline output keeps the quality default
    check_encode_preset("veryfast")
    with pytest.raises(InvalidInputError, match="encode preset"):
        check_encode_preset("warp-speed")
