"""`engine doctor` reports only what is usable here, says offline only when the user asked, and lists the extras,
tiny-random and the face model files."""

from __future__ import annotations

import json

import pytest


def _doctor(capsys, *args) -> str:
    from engine.cli import main

    assert main(["doctor", *args]) == 0
    return capsys.readouterr().out


def test_gpu_providers_listed_by_the_wheel_are_not_usable_without_a_gpu(capsys, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers",  # what the onnxruntime-gpu wheel lists on any machine
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    text = _doctor(capsys)
    assert "usable providers CPUExecutionProvider\n" in text
    assert "TensorrtExecutionProvider: not usable (listed by the wheel, but" in text
    assert "CUDAExecutionProvider: not usable" in text
    report = json.loads(_doctor(capsys, "--json"))
    assert report["onnxruntime"]["providers"] == ["CPUExecutionProvider"]


def test_offline_is_reported_only_when_asked(capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    text = _doctor(capsys)
    assert "offline mode: off" in text and "offline mode is on" not in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline mode: on (HF_HUB_OFFLINE=1)" in _doctor(capsys)


def test_extras_tiny_random_and_face_models_are_reported(capsys, monkeypatch, engine_cache):
    from engine import extras

    real = extras.missing_modules
    monkeypatch.setattr(extras, "missing_modules", lambda name: ["websockets"] if name == "serve" else real(name))
    text = _doctor(capsys)
    assert '[serve] missing (websockets): the WebSocket streaming server' in text
    assert "[face] " in text and "[plot] " in text
    assert "tiny-random: " in text and "latentsync-1.6: " in text and "eval:syncnet_v2: " in text
    assert "mediapipe: " in text and "insightface: " in text
    report = json.loads(_doctor(capsys, "--json"))
    assert set(report["extras"]) >= {"cpu", "gpu", "trt", "face", "serve", "plot", "ray"}
    assert report["extras"]["serve"]["present"] is False
    assert report["models"]["engine_cache"] == str(engine_cache)


def test_a_folder_shadowing_an_installed_package_is_reported(capsys, monkeypatch, tmp_path):
    pytest.importorskip("kernels")  # Hugging Face's kernel hub, installed with transformers
    monkeypatch.chdir(tmp_path)
    assert "shadowed packages: none" in _doctor(capsys)
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    text = _doctor(capsys)
    assert "shadowed packages: 1" in text
    line = next(line for line in text.splitlines() if "WARNING" in line)
    assert str(tmp_path / "kernels") in line and "site-packages" in line and "'kernels' (kernels " in line
    report = json.loads(_doctor(capsys, "--json"))
    assert report["shadowed_packages"][0]["folder"] == str(tmp_path / "kernels")
