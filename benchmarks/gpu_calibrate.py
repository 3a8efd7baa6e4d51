"""gpu_check's `calibrate` step: measured ms per network call next to the modelled device's prediction.

For each network the engine calls (U-Net full and shallow pass, VAE encoder and decoder, audio encoder), at the
shapes the engine runs (one 16-frame chunk with CFG batch 2 at 512 and 256 px; one 30 s whisper window), the
call is timed on the device through the same spec-shaped wrapper the exporters use, its FLOPs are counted on the
meta device, and `engine.modelled.cost.predict_ms` gives the modelled time for the GPU profile that matches
`torch.cuda.get_device_name()`. `calibration_record` turns the calls into the calibration file the modelled
device loads (`engine.modelled.cost.load_calibration`), written as calibration.json beside the results.

A CPU run (`--device cpu --quick`) exercises the same code on tiny-random; its file says `valid: false`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

# (substring of torch.cuda.get_device_name(), profile name), first match wins
PROFILE_BY_NAME = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"), ("L4", "l4"), ("4090", "rtx4090"))
FALLBACK_PROFILE = "h100"
CALL_ESTIMATE_S = 4.0  # one network's FLOP count, warm-up and timing (official size, on a GPU)


def profile_for(device_name: str | None) -> tuple[str, str | None]:
    """(profile name, note): the profile matching the device's name, else FALLBACK_PROFILE with a note saying so."""
    for needle, name in PROFILE_BY_NAME:
        if device_name and needle.lower() in device_name.lower():
            return name, None
    return FALLBACK_PROFILE, (f"no profile matches {device_name or 'this device (no GPU)'!r}: "
                              f"{FALLBACK_PROFILE} is used, so predicted_ms and the efficiencies are not this device's")


def engine_shapes(plan) -> list[tuple[str, int, Any]]:  # noqa: ANN001
    """(network, resolution, ShapeSettings) of the calls the engine makes per chunk, largest resolution first."""
    from export.specs import WHISPER_WINDOW_MEL_FRAMES, ShapeSettings

    calls = []
    for latent in plan.latent_sizes:
        unet = ShapeSettings(batch=plan.batch, frames=plan.frames, height=latent, width=latent)
        vae = ShapeSettings(batch=plan.vae_frames if plan.quick else plan.frames, height=latent, width=latent)
        calls += [("unet", latent * 8, unet), ("unet_shallow", latent * 8, unet), ("vae_encoder", latent * 8, vae),
                  ("vae_decoder", latent * 8, vae)]
    # --quick: a 2 s window (the encoder takes any length); the engine's call is one 30 s window
    calls.append(("audio_encoder", 0, ShapeSettings(batch=1, length=200 if plan.quick else WHISPER_WINDOW_MEL_FRAMES)))
    return calls


def _models(plan, dtype: torch.dtype):  # noqa: ANN001, ANN202
    """(unet, vae, audio encoder) on the device: official sizes with random weights; tiny-random with --quick."""
    from engine.audio.whisper import follow_run_dtype

    if plan.quick:
        from engine.weights import load_models

        models = load_models("tiny-random", device=plan.device, dtype=dtype)
    else:
        import random_models

        models = random_models.official_random_models(device=plan.device, dtype=dtype, resolution=512)
    follow_run_dtype(models.audio_encoder, torch.device(plan.device), dtype)  # the engine's audio dtype on CUDA
    return models.unet, models.vae, models.audio_encoder


def _meta_builder(network: str, module: torch.nn.Module) -> Callable[[], torch.nn.Module]:
    """A constructor of the same architecture, called under `torch.device("meta")` (no memory, no kernels)."""
    if network in ("unet", "unet_shallow"):
        from engine.models import LatentSyncUNet

        config = dict(module.config) if hasattr(module, "config") else None
        return lambda: LatentSyncUNet.from_config(config)
    if network in ("vae_encoder", "vae_decoder"):
        from engine.models.vae import build_vae

        config = dict(module.config)
        return lambda: build_vae(config)
    from engine.audio.whisper import WhisperAudioEncoder

    dims = dict(module.dims)
    return lambda: WhisperAudioEncoder(dims)


def count_flops(network: str, module: torch.nn.Module, feeds: dict[str, torch.Tensor]) -> tuple[float, str]:
    """(FLOPs of one call, how they were counted): on the meta device, as gpu_measure.unet_flops does; where the
    architecture cannot run on meta, on one real call under the same counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from export.wrappers import wrap

    try:
        with torch.device("meta"):
            meta = wrap(network, _meta_builder(network, module)())
        meta_feeds = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in feeds.items()}
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(*meta_feeds.values())
        return float(counter.get_total_flops()), "meta device"
    except Exception as exc:  # noqa: BLE001 - a module that needs real data: count on one real call instead
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            wrap(network, module)(*feeds.values())
        return float(counter.get_total_flops()), f"one real call (meta: {type(exc).__name__})"


def measure_calibration(plan, budget, emit, path: Path) -> None:  # noqa: ANN001
    """Time each engine-shaped call, emit one row per call, then write the calibration file to `path`."""
    import gpu_measure as m
    from gpu_check import write_atomically

    from engine.modelled.cost import calibration_record, predict_ms
    from engine.modelled.profiles import get_profile
    from export.specs import get_spec
    from export.wrappers import geometry_of, wrap

    cuda = plan.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(torch.device(plan.device)) if cuda else None
    profile_name, note = profile_for(device_name)
    profile = get_profile(profile_name)
    dtype_name = plan.dtypes[0]  # fp16 on a GPU (the engine's default there), fp32 with --quick
    dtype = m.DTYPES[dtype_name]
    emit({"kind": "calibration-profile", "device_name": device_name or "cpu", "profile": profile_name,
          "dtype": dtype_name, "note": note})
    unet, vae, audio = _models(plan, dtype)
    modules = {"unet": unet, "unet_shallow": unet, "vae_encoder": vae, "vae_decoder": vae, "audio_encoder": audio}
    geometry = geometry_of(unet=unet, vae=vae, audio_encoder=audio)
    calls = []
    for network, resolution, settings in engine_shapes(plan):
        base = {"kind": "calibration", "network": network, "resolution": resolution or None}
        if not budget.fits(CALL_ESTIMATE_S):
            emit({**base, "skipped": f"budget: {budget.left():.0f} s left"})
            continue
        try:
            # the audio encoder takes an fp32 mel and runs in its compute dtype (as the engine calls it)
            feed_dtype = torch.float32 if network == "audio_encoder" else dtype
            feeds = get_spec(network).sample_inputs(geometry, settings, dtype=feed_dtype, device=plan.device)
            flops, counted = count_flops(network, modules[network], feeds)
            wrapper = wrap(network, modules[network])
            with torch.inference_mode():
                timing = m.time_call(lambda: wrapper(*feeds.values()), plan.device, plan.warmup,
                                     max(plan.iters // 2, 1))
        except Exception as exc:  # a failing network is a result, not the end of the step
            emit({**base, "error": f"{type(exc).__name__}: {exc}"[:500]})
            m.free(plan.device)
            continue
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        call = {"network": network, "shapes": shapes, "flops": flops, "measured_ms": timing["ms_median"]}
        calls.append(call)
        predicted = predict_ms(profile, network, flops, dtype_name)
        emit({**base, **call, "flops_counted_on": counted, "predicted_ms": round(predicted, 4),
              "measured_over_predicted": round(timing["ms_median"] / predicted, 3) if predicted else None,
              "ms_min": timing["ms_min"], "iters": timing["iters"]})
        m.free(plan.device)
    if not calls:
        emit({"kind": "calibration-file", "skipped": "no call was measured"})
        return
    record = calibration_record(profile, device_name or "cpu", dtype_name, calls)
    record.update(source="benchmarks/gpu_check.py --steps calibrate", valid=cuda and note is None,
                  note=note if cuda else "measured on a CPU (--quick, tiny-random): exercises the format only; "
                                         "never load it into the modelled device")
    write_atomically(path, json.dumps(record, indent=1) + "\n")
    emit({"kind": "calibration-file", "file": path.name, "profile": profile_name, "valid": record["valid"],
          "efficiency": record["efficiency"], "calls": len(calls)})
