"""The only TensorRT builder calls: parse an ONNX file and build a serialized engine for one profile.

Precision comes from the graph by default (`typing="strong"`): the ONNX file is exported at the run's dtype
with every normalisation and softmax wrapped in fp32 casts (export.graph_edits), and a strongly typed network
obeys those types exactly, so GroupNorm/LayerNorm statistics are computed in fp32 as in eager PyTorch. The
older `typing="weak"` build (builder FP16/BF16 flags on any graph) lets TensorRT pick each layer's precision;
with `fp32_norms` it then pins normalisation, reduction and softmax layers to fp32 with precision constraints.
Both choices are fields of BuildSettings, so they key the engine file and are recorded in its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.errors import EngineError, IncompatibleEngineError, InvalidInputError, expect

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "bf16", "fp32")
TYPINGS = ("strong", "weak")
Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)
# Layers whose arithmetic must stay fp32 in a weakly typed fp16/bf16 build (statistics and exponent sums).
FP32_LAYER_TYPES = ("NORMALIZATION", "REDUCE", "SOFTMAX")


@dataclass(frozen=True)
class BuildSettings:
    """Builder options that change the engine (all of them go into the engine key and manifest)."""

    precision: str = "fp16"  # strong typing: the ONNX graph's dtype; weak typing: the builder flag
    optimization_level: int = 3  # TensorRT builder_optimization_level, 0..5
    workspace_gib: float = 0.0  # 0: TensorRT's default (the device's memory)
    typing: str = "strong"  # "strong": the graph's types; "weak": builder precision flags (TensorRT 10 only)
    fp32_norms: bool = True  # normalisation statistics in fp32 (graph casts; with weak typing also layer constraints)

    def __post_init__(self) -> None:
        expect(self.precision in PRECISIONS, InvalidInputError, "precision", PRECISIONS, self.precision)
        expect(self.typing in TYPINGS, InvalidInputError, "typing", TYPINGS, self.typing)
        expect(0 <= self.optimization_level <= 5, InvalidInputError, "optimization_level", "0..5", self.optimization_level)
        expect(self.workspace_gib >= 0, InvalidInputError, "workspace_gib", ">= 0", self.workspace_gib)

    def flags(self) -> dict[str, object]:
        return asdict(self)


def network_flags(trt: Any, settings: BuildSettings) -> int:
    """create_network flags: strongly typed when asked (TensorRT >= 9); explicit batch before TensorRT 10."""
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if settings.typing == "strong":
        if not hasattr(creation, "STRONGLY_TYPED"):
            raise IncompatibleEngineError(f"TensorRT {trt.__version__}: expected strongly typed networks (9.0+), "
                                          "found none; build with typing='weak'")
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def configure_precision(trt: Any, network: Any, config: Any, settings: BuildSettings) -> list[str]:
    """Set precision flags / layer constraints on a parsed network; returns the names of layers pinned to fp32."""
    if settings.precision == "fp32" or settings.typing == "strong":
        if settings.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32
        return []  # strongly typed: the graph's casts decide (precision flags are not allowed)
    config.set_flag(trt.BuilderFlag.FP16 if settings.precision == "fp16" else trt.BuilderFlag.BF16)
    if not settings.fp32_norms:
        return []
    pinned_types = {getattr(trt.LayerType, name) for name in FP32_LAYER_TYPES}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in pinned_types:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def build_serialized_engine(
    onnx_path: Path, profile: Profile, settings: BuildSettings, timing_cache: bytes | None, *, trt: Any = None
) -> tuple[bytes, bytes]:
    """(serialized engine, serialized timing cache) for `onnx_path` with one optimisation profile."""
    if trt is None:
        from engine.extras import import_optional

        trt = import_optional("tensorrt", "trt", what="engine build")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, settings))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves <name>.onnx.data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise IncompatibleEngineError(f"ONNX {onnx_path}: expected a graph TensorRT can parse, found errors: {errors}")

    config = builder.create_builder_config()
    pinned = configure_precision(trt, network, config, settings)
    if pinned:
        log.info("%s: %d normalisation/reduction/softmax layers pinned to fp32", Path(onnx_path).name, len(pinned))
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
