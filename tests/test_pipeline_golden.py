"""End-to-end parity with the official pipeline (golden/e2e_demo1): the whole chunked core on a real clip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def e2e(golden, tmp_path_factory):
    """The fixture's weights laid out as a user's local model directory (the official file layouts)."""
    from engine.weights import load_models, write_official_unet_checkpoint

    src = golden / "e2e_demo1"
    model_dir = tmp_path_factory.mktemp("e2e_model")
    shutil.copytree(src / "weights", model_dir, dirs_exist_ok=True)
    write_official_unet_checkpoint(load_file(golden / "unet_tiny_weights.safetensors"), model_dir / "latentsync_unet.pt")
    models = load_models(str(model_dir), device="cpu", dtype=torch.float32, resolution=256)
    inputs = load_file(src / "inputs.safetensors")
    frames = np.load(src / "inputs_frames.npz")["frames"]
    return models, inputs, frames, src


def _run(models, inputs, frames, config):
    from engine.pipeline import LipSyncCore
    from engine.pipeline.faces import LandmarkArraySource

    core = LipSyncCore(unet=models.unet, vae=models.vae, audio_encoder=models.audio_encoder,
                       resolution=models.resolution, device="cpu", dtype=torch.float32)
    plan = core.plan_audio(inputs["audio_16k"].numpy())
    out = list(core.run(iter(frames), plan, LandmarkArraySource(inputs["landmarks3"].numpy()), config,
                        num_source_estimate=len(frames)))
    return plan, out


def _assert_frames_close(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape
    diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
    equal = float((diff == 0).mean())
    assert diff.max() <= 2 and equal >= 0.99, f"max diff {diff.max()}, equal fraction {equal:.5f}"


@pytest.mark.parametrize(
    "variant,steps,guidance,deepcache",
    [("expected_nocfg_3steps", 3, 1.0, None), ("expected", 8, 1.5, 2)],
)
def test_e2e_demo1_matches_official(e2e, variant, steps, guidance, deepcache):
    from engine.pipeline import SyncConfig

    # The fixture is an official 1-thread run; torch's multi-threaded kernels sum in another order, which moves
    # a few values by one uint8 step (seen: max 1, 99.9993 % equal with 2 threads), well inside the bound below,
    # so the test runs with every core instead of forcing one.
    models, inputs, frames, src = e2e
    config = SyncConfig(steps=steps, guidance_scale=guidance, deepcache_interval=deepcache, seed=42)
    plan, out = _run(models, inputs, frames, config)
    expected_frames = np.load(src / f"{variant}_frames.npz")["frames_out"]
    main = load_file(src / "expected.safetensors")
    assert plan.num_frames == 34 == len(out)
    assert [o.source_index for o in out] == main["frame_source_index"].tolist()
    np.testing.assert_array_equal(plan.trimmed_audio, main["audio_out"].numpy())
    torch.testing.assert_close(plan.features, main["whisper_feature"], atol=1e-4, rtol=0)
    assert all(o.has_face for o in out)
    _assert_frames_close(np.stack([o.rgb for o in out]), expected_frames)
