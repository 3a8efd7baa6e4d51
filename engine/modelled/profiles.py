"""GPU profiles for the modelled device: peak dense tensor throughput, memory bandwidth, assumed efficiencies.

Peaks are the vendors' dense (no sparsity) tensor-core figures for fp16/bf16 inputs with fp32 accumulation, the
arithmetic our fp16/bf16 paths use. Efficiencies are *assumptions* (the fraction of peak a network reaches) until a
calibration file from a real run replaces them (`engine.modelled.cost.load_calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Networks as named in export.specs (the executors' `network`).
NETWORKS = ("unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder")

# Assumed fraction of the dense fp16/bf16 peak reached per network (no measurement yet): diffusion U-Nets of this
# size reach roughly 40-50 % of peak with cuDNN/TensorRT convolutions and flash attention; the VAE at 256-512 px is
# dominated by GroupNorm and memory traffic at high resolution; the whisper-tiny encoder is too small to fill an H100.
DEFAULT_EFFICIENCY = {"unet": 0.45, "unet_shallow": 0.35, "vae_encoder": 0.35, "vae_decoder": 0.35,
                      "audio_encoder": 0.10}
# Assumed fixed cost of one network call (launches not hidden by CUDA graphs, Python dispatch, synchronisation).
DEFAULT_LAUNCH_OVERHEAD_MS = {"unet": 0.30, "unet_shallow": 0.20, "vae_encoder": 0.20, "vae_decoder": 0.20,
                              "audio_encoder": 0.20}


@dataclass(frozen=True)
class GpuProfile:
    """One GPU as the cost model sees it. `efficiency` and `launch_overhead_ms` are per network."""

    name: str
    description: str
    peak_tflops_fp16: float  # dense fp16 tensor core, fp32 accumulate
    peak_tflops_bf16: float  # dense bf16 tensor core, fp32 accumulate
    peak_tflops_fp32: float  # dense fp32 (TF32 off): what an fp32 run is costed at
    memory_gb_per_s: float
    memory_gib: float
    efficiency: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EFFICIENCY))
    launch_overhead_ms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LAUNCH_OVERHEAD_MS))
    calibrated_from: str | None = None  # a calibration file's path, or None while the efficiencies are assumed

    def peak_tflops(self, dtype: str) -> float:
        return {"fp16": self.peak_tflops_fp16, "bf16": self.peak_tflops_bf16, "fp32": self.peak_tflops_fp32}[dtype]


PROFILES: dict[str, GpuProfile] = {
    # NVIDIA H200 datasheet (SXM): FP16/BF16 tensor 1,979 TFLOPS with sparsity -> 989 dense; FP32 67 TFLOPS;
    # HBM3e 4.8 TB/s, 141 GB.
    "h200": GpuProfile("h200", "NVIDIA H200 SXM 141 GB", 989.0, 989.0, 67.0, 4800.0, 141 * 1e9 / 2**30),
    # NVIDIA H100 datasheet (SXM5 80 GB): FP16/BF16 tensor 1,979 TFLOPS with sparsity -> 989 dense; FP32 67 TFLOPS;
    # HBM3 3.35 TB/s.
    "h100": GpuProfile("h100", "NVIDIA H100 SXM5 80 GB", 989.0, 989.0, 67.0, 3350.0, 80 * 1e9 / 2**30),
    # NVIDIA A100 datasheet (SXM4 80 GB): FP16/BF16 tensor 312 TFLOPS dense; FP32 19.5 TFLOPS; HBM2e 2,039 GB/s.
    "a100": GpuProfile("a100", "NVIDIA A100 SXM4 80 GB", 312.0, 312.0, 19.5, 2039.0, 80 * 1e9 / 2**30),
    # NVIDIA L4 datasheet: FP16/BF16 tensor 242 TFLOPS with sparsity -> 121 dense; FP32 30.3 TFLOPS; GDDR6 300 GB/s.
    "l4": GpuProfile("l4", "NVIDIA L4 24 GB", 121.0, 121.0, 30.3, 300.0, 24 * 1e9 / 2**30),
    # NVIDIA Ada Lovelace architecture whitepaper (RTX 4090): FP16/BF16 tensor with FP32 accumulate 165.2 TFLOPS
    # dense; FP32 82.6 TFLOPS; GDDR6X 1,008 GB/s, 24 GB.
    "rtx4090": GpuProfile("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", 165.2, 165.2, 82.6, 1008.0, 24 * 1e9 / 2**30),
}


def get_profile(name: str) -> GpuProfile:
    """A profile by name (case-insensitive), or a ValueError that lists the known ones."""
    key = name.lower().replace("-", "").replace(" ", "")
    if key not in PROFILES:
        raise ValueError(f"unknown GPU profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[key]
