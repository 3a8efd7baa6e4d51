"""The cost model of the modelled device: device time of one network call from its FLOPs.

    ms = flops / (peak(dtype) * efficiency[network]) * 1e3 + launch_overhead_ms[network]

FLOPs are counted once per (network, input shapes) on the meta device (`torch.utils.flop_counter`), so costing a
call is a dictionary lookup after its first occurrence. A calibration file from a real GPU run
(`benchmarks/gpu_check.py`, step `calibrate`) replaces the assumed efficiencies and overheads; its format:

    {"kind": "modelled-device-calibration", "version": 1, "device": "<torch.cuda.get_device_name()>",
     "profile": "h100", "dtype": "fp16",
     "calls": [{"network": "unet", "shapes": {"sample": [1, 13, 16, 64, 64], ...}, "flops": 1.2e13,
                "measured_ms": 31.0, "predicted_ms": 27.4}, ...],
     "efficiency": {"unet": 0.41, ...}, "launch_overhead_ms": {"unet": 0.3, ...}}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from engine.modelled.profiles import GpuProfile

CALIBRATION_KIND = "modelled-device-calibration"
CALIBRATION_VERSION = 1


def predict_ms(profile: GpuProfile, network: str, flops: float, dtype: str = "fp16") -> float:
    """Modelled device time (ms) of one call of `network` costing `flops` in `dtype`."""
    rate = profile.peak_tflops(dtype) * 1e12 * profile.efficiency[network]
    return flops / rate * 1e3 + profile.launch_overhead_ms[network]


def efficiency_from(profile: GpuProfile, network: str, flops: float, measured_ms: float, dtype: str = "fp16") -> float:
    """The efficiency that makes `predict_ms` equal a measured time (launch overhead taken off first)."""
    compute_ms = max(measured_ms - profile.launch_overhead_ms[network], 1e-6)
    return flops / (compute_ms * 1e-3) / (profile.peak_tflops(dtype) * 1e12)


def calibration_record(profile: GpuProfile, device: str, dtype: str, calls: list[dict]) -> dict:
    """A calibration file's content from measured calls ({network, shapes, flops, measured_ms}).

    Per network, the efficiency is the FLOP-weighted one over its calls (total FLOPs / total compute time)."""
    out_calls, eff = [], {}
    for call in calls:
        out_calls.append({**call, "predicted_ms": round(predict_ms(profile, call["network"], call["flops"], dtype), 4)})
    for network in sorted({c["network"] for c in calls}):
        mine = [c for c in calls if c["network"] == network]
        flops = sum(c["flops"] for c in mine)
        compute_s = sum(max(c["measured_ms"] - profile.launch_overhead_ms[network], 1e-6) for c in mine) * 1e-3
        eff[network] = round(flops / compute_s / (profile.peak_tflops(dtype) * 1e12), 5)
    return {"kind": CALIBRATION_KIND, "version": CALIBRATION_VERSION, "device": device, "profile": profile.name,
            "dtype": dtype, "calls": out_calls, "efficiency": eff,
            "launch_overhead_ms": dict(profile.launch_overhead_ms)}


def load_calibration(profile: GpuProfile, path: str | Path) -> GpuProfile:
    """`profile` with the efficiencies (and overheads) of a calibration file; networks it lacks keep the defaults."""
    data = json.loads(Path(path).read_text())
    if data.get("kind") != CALIBRATION_KIND:
        raise ValueError(f"{path}: not a modelled-device calibration file (kind {data.get('kind')!r})")
    efficiency = {**profile.efficiency, **data.get("efficiency", {})}
    overhead = {**profile.launch_overhead_ms, **data.get("launch_overhead_ms", {})}
    return dataclasses.replace(profile, efficiency=efficiency, launch_overhead_ms=overhead, calibrated_from=str(path))
