"""The whole pipeline on an accelerated backend agrees with eager PyTorch (real ONNX Runtime sessions)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def inputs(golden):
    src = golden / "e2e_demo1"
    frames = np.load(src / "inputs_frames.npz")["frames"][:8]  # 8 frames of a real clip, 320x320
    data = load_file(src / "inputs.safetensors")
    return frames, data["audio_16k"].numpy()[:5120], data["landmarks3"].numpy()[:8]


def test_onnxruntime_backend_matches_torch_end_to_end(inputs, tiny_random_onnx, tmp_path):
    import shutil

    from engine.backends import EngineConfig
    from engine.errors import BackendUnavailableError
    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.sdk import LipSync

    # this run's `engine export` of tiny-random (conftest.tiny_random_onnx), copied: its files are current for the
    # run's tiny-random, so nothing is exported again and nothing is written into the engine cache
    artifacts = shutil.copytree(tiny_random_onnx, tmp_path / "artifacts")
    frames, audio, landmarks = inputs
    settings = dict(steps=2, guidance=1.5, deepcache=2, seed=3, length="official")
    eager = LipSync.from_pretrained("tiny-random", device="cpu", backend="torch")
    try:
        ort = LipSync.from_pretrained("tiny-random", device="cpu", backend="onnxruntime",
                                      engine=EngineConfig(artifact_dir=artifacts))
    except BackendUnavailableError as exc:  # onnxruntime not installed: the explicit request must say so
        pytest.skip(str(exc))
    a = eager(frames, audio, face=LandmarkArraySource(landmarks), **settings).frames
    b = ort(frames, audio, face=LandmarkArraySource(landmarks), **settings).frames
    assert a.shape == b.shape == (10, 320, 320, 3)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 3 and (diff == 0).mean() > 0.98, (diff.max(), (diff == 0).mean())
    assert ort.core.runners.choice == {"unet": "onnxruntime", "vae": "onnxruntime", "audio": "onnxruntime"}


def test_explicit_unavailable_backend_raises_instead_of_falling_back():
    from engine.errors import BackendUnavailableError
    from engine.pipeline.sdk import LipSync

    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        LipSync.from_pretrained("tiny-random", device="cpu", backend="tensorrt")
