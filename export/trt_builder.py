"""The only TensorRT builder calls: parse an ONNX file and build a serialized engine for one profile."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from engine.errors import EngineError, IncompatibleEngineError, InvalidInputError, expect

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)


@dataclass(frozen=True)
class BuildSettings:
    """Builder options that change the engine (all of them go into the engine key and manifest)."""

    precision: str = "fp16"
    optimization_level: int = 3  # TensorRT builder_optimization_level, 0..5
    workspace_gib: float = 0.0  # 0: TensorRT's default (the device's memory)

    def __post_init__(self) -> None:
        expect(self.precision in PRECISIONS, InvalidInputError, "precision", PRECISIONS, self.precision)
        expect(0 <= self.optimization_level <= 5, InvalidInputError, "optimization_level", "0..5", self.optimization_level)
        expect(self.workspace_gib >= 0, InvalidInputError, "workspace_gib", ">= 0", self.workspace_gib)

    def flags(self) -> dict[str, object]:
        return asdict(self)


def build_serialized_engine(
    onnx_path: Path, profile: Profile, settings: BuildSettings, timing_cache: bytes | None
) -> tuple[bytes, bytes]:
    """(serialized engine, serialized timing cache) for `onnx_path` with one optimisation profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation_flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10
        creation_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(creation_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves <name>.onnx.data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise IncompatibleEngineError(f"ONNX {onnx_path}: expected a graph TensorRT can parse, found errors: {errors}")

    config = builder.create_builder_config()
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32
    config.builder_optimization_level = settings.optimization_level
    if settings.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    try:
        cache = config.create_timing_cache(timing_cache or b"")
    except Exception as exc:  # a corrupt cache must not fail the build (R17)
        log.warning("ignoring unreadable timing cache (%s); starting a fresh one", exc)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT build of {onnx_path}: expected a serialized engine, found None (see the log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())
