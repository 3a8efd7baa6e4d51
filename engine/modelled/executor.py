"""The modelled device's executors: each call sleeps for the cost model's time and returns zeros of the right shape.

A `ModelledDevice` stands in for one GPU. Its executors implement `engine.backends.base.Executor`, so the whole
engine (decode, faces, alignment, the engine core's batching and deadlines, restore, encode) runs for real around
them, while the networks cost what the profile says (`engine.modelled.cost.predict_ms`). FLOPs are counted once per
(network, input shapes) with `torch.utils.flop_counter` on meta-device copies of the networks, which is also where
the output shapes come from: no weights, no kernels. The sleep releases the GIL, as a real device call does while the
GPU works. Everything this produces is MODELLED, not measured.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from engine.errors import InvalidInputError, expect
from engine.modelled.cost import load_calibration, predict_ms
from engine.modelled.profiles import GpuProfile, get_profile

COST_DTYPES = ("fp16", "bf16", "fp32")
NETWORK_SIZES = ("loaded", "official")


@dataclass(frozen=True)
class ModelledOptions:
    """How the modelled device behaves (EngineConfig.modelled).

    `cpu_scale` K stretches every modelled device time by K, so that this machine's CPU stands for one K times
    larger (16 cores <-> K = 8 on a 2-core box); throughput measured x K then projects the target, under the stated
    assumption that the CPU stages scale with cores. `network_sizes`: "official" costs the official LatentSync
    networks (U-Net, sd-vae-ft-mse, whisper-tiny) whatever modules were loaded (model 512 px reference without real
    weights); "loaded" costs the loaded modules themselves.
    """

    profile: str = "h100"
    calibration: str | None = None  # a calibration file (benchmarks/gpu_check.py) replacing assumed efficiencies
    cpu_scale: float = 1.0
    dtype: str = "fp16"  # the arithmetic the modelled GPU runs in (what a real run would use)
    network_sizes: str = "official"

    def __post_init__(self) -> None:
        expect(isinstance(self.cpu_scale, (int, float)) and self.cpu_scale > 0, InvalidInputError,
               "modelled cpu_scale", "a number > 0", self.cpu_scale)
        expect(self.dtype in COST_DTYPES, InvalidInputError, "modelled dtype", COST_DTYPES, self.dtype)
        expect(self.network_sizes in NETWORK_SIZES, InvalidInputError, "modelled network_sizes", NETWORK_SIZES,
               self.network_sizes)
        try:
            get_profile(self.profile)
        except ValueError as exc:
            raise InvalidInputError(f"modelled profile: {exc}") from None

    def gpu_profile(self) -> GpuProfile:
        profile = get_profile(self.profile)
        return load_calibration(profile, self.calibration) if self.calibration else profile


@dataclass
class NetworkTally:
    """What the modelled device spent on one network: calls, FLOPs, modelled and slept time."""

    calls: int = 0
    flops: float = 0.0
    modelled_ms: float = 0.0  # the cost model's device time (before cpu_scale)
    slept_s: float = 0.0  # wall time the calls took (cost x cpu_scale, plus the OS's lateness)

    def as_dict(self) -> dict:
        return {"calls": self.calls, "flops": self.flops, "modelled_ms": round(self.modelled_ms, 3),
                "slept_s": round(self.slept_s, 4)}


@dataclass
class _Shape:
    flops: float
    outputs: dict[str, tuple[tuple[int, ...], torch.dtype]]


class ModelledDevice:
    """One modelled GPU: the profile, the FLOP/shape cache per call shape, and the tallies of every executor."""

    def __init__(self, options: ModelledOptions = ModelledOptions()) -> None:
        self.options = options
        self.profile = options.gpu_profile()
        self._lock = threading.Lock()
        self.tallies: dict[str, NetworkTally] = {}
        self._meta: dict[str, nn.Module] = {}  # network -> wrapped meta-device module
        self.started = time.monotonic()

    # ------------------------------------------------------------------ costing
    def attach(self, network: str, module: nn.Module) -> None:
        """The module whose FLOPs and shapes cost `network` (moved to a meta-device copy once)."""
        from export.wrappers import wrap

        if network not in self._meta:
            self._meta[network] = wrap(network, _on_meta(network, module, self.options.network_sizes))

    def shape_of(self, network: str, feeds: Mapping[str, Tensor]) -> _Shape:
        """FLOPs and output shapes of one call.

        Every network's work is linear in its leading (batch / rows) axis: the U-Net's rows are independent
        samples (its attention spans a sample's frames, never rows), VAE rows are images, whisper rows are windows.
        So one row is counted, once per (module, per-row shapes, dtypes) in the process, and scaled by the rows:
        batching never triggers a new count, and engines with other options share the counts."""
        from export.specs import get_spec

        rows = int(feeds[get_spec(network).input_names[0]].shape[0])
        per_row = tuple((n, (int(t.shape[0]) // rows, *t.shape[1:]), t.dtype) for n, t in feeds.items())
        module = self._meta[network]
        inner = next(module.children())  # the shared meta network behind this device's wrapper
        key = (id(inner), network, per_row)
        with _COUNT_LOCK:
            one = _COUNTS.get(key)
        if one is None:
            one = _count(network, module, per_row)
            with _COUNT_LOCK:
                _COUNTS[key] = one
                _KEEP[id(inner)] = inner  # ids stay unique while the module lives
        return _Shape(one.flops * rows, {n: ((s[0] * rows, *s[1:]), dtype) for n, (s, dtype) in one.outputs.items()})

    def run(self, network: str, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Occupy the caller for the modelled time of this call (x cpu_scale), return zeros of the output shapes.

        The first call of a shape counts its FLOPs on the meta device (host work a real GPU call does not have):
        that time is taken off the sleep, so the call still lasts its modelled time unless counting took longer."""
        t0 = time.perf_counter()
        shape = self.shape_of(network, feeds)
        ms = predict_ms(self.profile, network, shape.flops, self.options.dtype)
        counted = time.perf_counter() - t0
        time.sleep(max(0.0, ms * self.options.cpu_scale / 1000.0 - counted))  # releases the GIL, as a GPU wait does
        busy = time.perf_counter() - t0
        with self._lock:
            tally = self.tallies.setdefault(network, NetworkTally())
            tally.calls += 1
            tally.flops += shape.flops
            tally.modelled_ms += ms
            tally.slept_s += busy
        return {name: torch.zeros(s, dtype=dtype) for name, (s, dtype) in shape.outputs.items()}

    # ------------------------------------------------------------------ reporting
    def reset(self) -> None:
        with self._lock:
            self.tallies.clear()
            self.started = time.monotonic()

    def report(self) -> dict:
        """Per network tallies and the totals; every figure is modelled."""
        with self._lock:
            tallies = {k: v.as_dict() for k, v in self.tallies.items()}
            modelled_ms = sum(v.modelled_ms for v in self.tallies.values())
            slept = sum(v.slept_s for v in self.tallies.values())
        return {"modelled": True, "profile": self.profile.name, "calibrated_from": self.profile.calibrated_from,
                "dtype": self.options.dtype, "cpu_scale": self.options.cpu_scale,
                "network_sizes": self.options.network_sizes, "networks": tallies,
                "modelled_device_ms": round(modelled_ms, 3), "slept_s": round(slept, 4)}


_COUNTS: dict[tuple, _Shape] = {}  # (module id, network, per-row input shapes) -> one row's FLOPs and outputs
_KEEP: dict[int, nn.Module] = {}
_COUNT_LOCK = threading.Lock()


def _count(network: str, module: nn.Module, per_row: tuple) -> _Shape:
    """FLOPs and output shapes of one row of `network`, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from export.specs import get_spec

    spec = get_spec(network)
    shapes = {n: (shape, dtype) for n, shape, dtype in per_row}
    args = [torch.empty(shapes[n][0], dtype=shapes[n][1], device="meta") for n in spec.input_names]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outs = module(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    main = shapes[spec.input_names[0]][1]
    return _Shape(float(counter.get_total_flops()), {n: (tuple(o.shape), main) for n, o in zip(spec.output_names, outs)})


class ModelledExecutor:
    """One network on the modelled device (the `Executor` protocol): host tensors in, zeros out, time slept."""

    backend = "modelled"

    def __init__(self, network: str, module: nn.Module, device_model: ModelledDevice) -> None:
        from export.specs import get_spec
        from export.wrappers import module_dtype

        self.network = network
        self.spec = get_spec(network)
        self.device = torch.device("cpu")  # the host tensors stand in for device tensors
        self.device_model = device_model
        device_model.attach(network, module)
        dtype = None if network == "audio_encoder" else module_dtype(module)
        dtype = None if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16) else dtype
        self.input_dtypes = {n: torch.float32 if n == "timestep" else dtype for n in self.spec.input_names}

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.device_model.run(self.network, feeds)


def _on_meta(network: str, module: nn.Module, sizes: str) -> nn.Module:
    """A meta-device module to count `network` on: the official architecture, or a meta copy of `module`."""
    if sizes == "official":
        return official_meta_module(network)
    if any(p.is_meta for p in module.parameters()):
        return module
    return copy.deepcopy(module).to("meta")


_OFFICIAL: dict[str, nn.Module] = {}
_OFFICIAL_LOCK = threading.Lock()


def official_meta_module(network: str) -> nn.Module:
    """The official network behind `network` (U-Net, sd-vae-ft-mse, whisper-tiny encoder) on the meta device."""
    group = "unet" if network.startswith("unet") else "vae" if network.startswith("vae") else "audio"
    with _OFFICIAL_LOCK:
        if group not in _OFFICIAL:
            _OFFICIAL[group] = _build_official(group)
        return _OFFICIAL[group]


def _build_official(group: str) -> nn.Module:
    if group == "unet":
        from engine.models import LatentSyncUNet, official_unet_config

        with torch.device("meta"):
            return LatentSyncUNet.from_config(official_unet_config()).eval()
    if group == "vae":
        from engine.models.vae import build_vae, official_vae_config

        with torch.device("meta"):
            return build_vae(official_vae_config()).eval()
    from engine.audio import load_whisper_encoder, random_whisper_state_dict, tiny_whisper_dims

    dims = tiny_whisper_dims()  # the official whisper-tiny encoder (only the unused text side is smaller)
    encoder = load_whisper_encoder({"dims": dims, "model_state_dict": random_whisper_state_dict(dims, 0)})
    return encoder.to("meta").eval()


def official_meta_models(resolution: int, name: str | None = None):
    """LoadedModels of the official networks on the meta device: what a modelled run of 1.5 (256) / 1.6 (512) loads.

    No weights exist anywhere: only the modelled backend can run them (the CPU stages run for real around it).
    """
    from engine.models import official_unet_config
    from engine.weights import LoadedModels

    expect(resolution in (256, 512), InvalidInputError, "modelled resolution", (256, 512), resolution)
    name = name or f"latentsync-{'1.6' if resolution == 512 else '1.5'} (modelled, no weights)"
    return LoadedModels(name=name, resolution=resolution, unet=official_meta_module("unet"),
                        vae=official_meta_module("vae"), audio_encoder=official_meta_module("audio"), is_random=True,
                        unet_config=official_unet_config())


_DEVICES: dict[ModelledOptions, ModelledDevice] = {}  # one per options value: an engine's executors share it


def device_for(options: ModelledOptions) -> ModelledDevice:
    """The shared ModelledDevice of `options` (its tallies are read through any executor's `device_model`)."""
    with _OFFICIAL_LOCK:
        if options not in _DEVICES:
            _DEVICES[options] = ModelledDevice(options)
        return _DEVICES[options]
