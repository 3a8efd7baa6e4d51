"""The modelled device's cost model: profiles resolve, predictions follow the formula, calibration round-trips."""

from __future__ import annotations

import json

import pytest

from engine.modelled.cost import calibration_record, efficiency_from, load_calibration, predict_ms
from engine.modelled.profiles import NETWORKS, PROFILES, get_profile


def test_every_profile_covers_every_network():
    for profile in PROFILES.values():
        assert set(profile.efficiency) == set(NETWORKS) == set(profile.launch_overhead_ms)
        assert profile.peak_tflops("bf16") > profile.peak_tflops("fp32") > 0
    with pytest.raises(ValueError, match="h200"):
        get_profile("tpu")


def test_prediction_and_calibration_agree(tmp_path):
    profile = get_profile("h100")
    flops = 5e12
    predicted = predict_ms(profile, "unet", flops)
    assert predicted == pytest.approx(flops / (989e12 * 0.45) * 1e3 + 0.30)
    measured = 2 * predicted
    record = calibration_record(profile, "NVIDIA H100", "fp16",
                                [{"network": "unet", "shapes": {}, "flops": flops, "measured_ms": measured}])
    assert record["efficiency"]["unet"] == pytest.approx(efficiency_from(profile, "unet", flops, measured), rel=1e-4)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(record))
    calibrated = load_calibration(profile, path)
    assert calibrated.calibrated_from == str(path)
    assert predict_ms(calibrated, "unet", flops) == pytest.approx(measured, rel=1e-3)
    assert calibrated.efficiency["vae_decoder"] == profile.efficiency["vae_decoder"]  # not in the file: default kept
    path.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(ValueError, match="not a modelled-device calibration"):
        load_calibration(profile, path)
