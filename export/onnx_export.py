"""ONNX export of one network by spec name, with a manifest that says whether a file is still current."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from engine.errors import IncompatibleEngineError, InvalidInputError, expect
from export.artifacts import (
    check_against_manifest,
    onnx_data_path,
    onnx_sha256,
    read_manifest,
    stable_key,
    weights_sha256,
    write_manifest,
)
from export.graph_edits import EDIT_NAME, keep_norms_in_fp32
from export.locking import file_lock
from export.specs import ShapeSettings, get_spec
from export.wrappers import geometry_for_network, graph_dtype, module_device, wrap

log = logging.getLogger(__name__)

OPSET = 18  # LayerNormalization (17+) keeps TensorRT's normalisation layers in FP32
IR_VERSION = 10  # onnxruntime-gpu builds accept IR <= 10 broadly (<= 13 for recent ones)
EXPORT_FORMAT = 2  # bump when the exported graph's meaning changes (2: fp32 norms, dynamo exporter, file-keyed weights)
EXTERNAL_ALIGN = 4096  # byte alignment of tensors in <name>.onnx.data
INLINE_TENSOR_BYTES = 1024  # smaller external tensors are moved back into the graph file
EXTERNAL_DATA_BYTES = 1 << 30  # above this much tensor data, weights go to <name>.onnx.data (protobuf caps at 2 GiB)
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# torch.export-based exporter ("dynamo") for every network whose parity tests pass with it, except the full U-Net:
# its graph exports in 11 s with the TorchScript exporter and in 348 s with dynamo on the tiny model (191 s of that
# in the ONNX optimizer; 100 s without it) on the 2-core development box, with equal parity (1.5e-6 vs PyTorch).
# That would make first use and CI several minutes slower for no difference in the graph's results.
EXPORTERS = {"unet": "torchscript", "unet_shallow": "dynamo", "vae_encoder": "dynamo", "vae_decoder": "dynamo",
             "audio_encoder": "dynamo"}


def dtype_name(dtype: torch.dtype) -> str:
    expect(dtype in _DTYPE_NAMES, InvalidInputError, "export dtype", sorted(_DTYPE_NAMES.values()), dtype)
    return _DTYPE_NAMES[dtype]


def onnx_filename(network: str, dtype: torch.dtype = torch.float32) -> str:
    """'unet.onnx' for fp32 graphs, 'unet.fp16.onnx' otherwise."""
    name = dtype_name(dtype)
    return f"{network}.onnx" if name == "fp32" else f"{network}.{name}.onnx"


def export_fields(network: str, dtype: torch.dtype, weights_hash: str, *, opset: int = OPSET, ir_version: int = IR_VERSION,
                  fp32_norms: bool = True) -> dict[str, Any]:
    """The manifest fields that decide whether an exported file still matches (network, weights, graph format)."""
    spec = get_spec(network)
    return {
        "format": EXPORT_FORMAT,
        "network": network,
        "dtype": dtype_name(dtype),
        "opset": opset,
        "ir_version": ir_version,
        "weights_sha256": weights_hash,
        EDIT_NAME: fp32_norms,
        "exporter": EXPORTERS[network],
        "spec_key": stable_key({"inputs": spec.inputs, "outputs": spec.outputs}),
    }


def export_onnx(
    network: str,
    module: nn.Module,
    out_dir: str | os.PathLike,
    *,
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    settings: ShapeSettings | None = None,
    weights_hash: str | None = None,
) -> Path:
    """Export `network` (a name in export.specs.SPECS) from an already loaded module; returns the .onnx path.

    `module` is the LatentSyncUNet for 'unet' / 'unet_shallow', the AutoencoderKL for 'vae_encoder' /
    'vae_decoder' and the whisper encoder for 'audio_encoder'. The graph keeps the module's dtype (the whisper
    encoder's compute dtype) and device; the file passes onnx.checker and carries a manifest (`<file>.json`)
    with its sha256.
    """
    get_spec(network)  # unknown names fail before any work
    dtype = graph_dtype(network, module)
    target = Path(out_dir) / onnx_filename(network, dtype)
    with file_lock(target):
        return _export_locked(network, module, target, opset=opset, ir_version=ir_version, settings=settings,
                              weights_hash=weights_hash)


def _export_locked(network: str, module: nn.Module, target: Path, *, opset: int = OPSET, ir_version: int = IR_VERSION,
                   settings: ShapeSettings | None = None, weights_hash: str | None = None) -> Path:
    """Export under the caller's lock on `target`: trace into a temp dir, finalise, move into place, check."""
    spec = get_spec(network)
    target.parent.mkdir(parents=True, exist_ok=True)
    dtype, device = graph_dtype(network, module), module_device(module)
    wrapper = wrap(network, module)
    geometry = geometry_for_network(network, module)
    inputs = spec.sample_inputs(geometry, settings, dtype=dtype, device=device)
    fields = export_fields(network, dtype, weights_hash or weights_sha256(module), opset=opset, ir_version=ir_version)
    with tempfile.TemporaryDirectory(prefix=f".{network}-", dir=target.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _trace(network, wrapper, inputs, raw, opset=opset)
        staged = Path(tmp) / target.name
        edited = _finalise(raw, staged, network=network, ir_version=ir_version)
        # Data file first, graph second, manifest last: a crash in between leaves a file whose manifest is stale.
        staged_data = onnx_data_path(staged)
        if staged_data.exists():
            os.replace(staged_data, onnx_data_path(target))
        else:
            onnx_data_path(target).unlink(missing_ok=True)
        os.replace(staged, target)
    check_onnx(target, ir_version=ir_version)
    write_manifest(target, {**fields, **_file_stats(target), "onnx_sha256": onnx_sha256(target),
                            "fp32_norm_nodes": len(edited),
                            "inputs": list(spec.input_names), "outputs": list(spec.output_names),
                            "dynamic_axes": spec.dynamic_axes(), "torch_version": torch.__version__})
    log.info("exported %s -> %s", network, target)
    return target


def _trace(network: str, wrapper: nn.Module, inputs: dict[str, torch.Tensor], raw: Path, *, opset: int) -> None:
    """Write the raw graph of `wrapper` with the exporter EXPORTERS names for `network`."""
    spec = get_spec(network)
    common = dict(input_names=list(spec.input_names), output_names=list(spec.output_names),
                  dynamic_axes=spec.dynamic_axes(), opset_version=opset)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter_logs():
        # shape checks in the modules are constants for one trace; dynamic axes are verified by tests instead
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*script_method. is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*'dynamic_axes' is not recommended", category=UserWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*from_dynamic_axes_to_dynamic_shapes is deprecated")
        warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.+ is deprecated")
        if EXPORTERS[network] == "dynamo":
            program = torch.onnx.export(wrapper, tuple(inputs.values()), dynamo=True, verbose=False, **common)
            program.save(str(raw))
        else:
            torch.onnx.export(wrapper, tuple(inputs.values()), str(raw), do_constant_folding=True, dynamo=False, **common)


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The dynamo exporter logs a warning per missing optional op library (torchvision); none concern us."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx._internal.exporter._registration",
                                              "torch.onnx._internal.exporter._core")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _finalise(raw: Path, dest: Path, *, network: str, ir_version: int, fp32_norms: bool = True) -> list[str]:
    """Pin the IR version, keep norms in fp32, tag the graph, write it as one file (+ one .data file when large).

    Returns the names of the nodes wrapped in fp32 casts (export.graph_edits).
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(raw), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer) and _external_bytes(model) <= EXTERNAL_DATA_BYTES:
        onnx.load_external_data_for_model(model, str(raw.parent))  # small weights saved beside the graph: inline them
    edited = keep_norms_in_fp32(model) if fp32_norms else []
    model.ir_version = ir_version
    model.producer_name = "latentsync-engine"
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != "network"]
    del model.metadata_props[:]
    for key, value in [*kept, ("network", network)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if any(uses_external_data(t) for t in model.graph.initializer):  # large: torch wrote the tensors beside the graph
        _gather_external_data(model, raw.parent, onnx_data_path(dest))
        onnx.save_model(model, str(dest))
        return edited
    if sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=onnx_data_path(dest).name, size_threshold=1024)
    else:
        onnx.save_model(model, str(dest))
    return edited


def _external_bytes(model) -> int:  # noqa: ANN001 - onnx.ModelProto
    """Bytes of tensor data stored outside the graph file."""
    from onnx.external_data_helper import uses_external_data

    total = 0
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            total += int(info.get("length", 0)) or EXTERNAL_DATA_BYTES + 1  # unknown length: treat as large
    return total


def _gather_external_data(model, src_dir: Path, data_path: Path) -> None:  # noqa: ANN001 - onnx.ModelProto
    """Stream every external tensor into one `data_path`, one tensor in memory at a time, and repoint the graph."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    with open(data_path, "wb") as out:
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                continue
            info = {e.key: e.value for e in tensor.external_data}
            with open(src_dir / info["location"], "rb") as src:
                src.seek(int(info.get("offset", 0)))
                data = src.read(int(info["length"])) if "length" in info else src.read()
            if len(data) < INLINE_TENSOR_BYTES:  # shape constants: runtimes need them in the graph for shape inference
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = data
                continue
            out.seek(-out.tell() % EXTERNAL_ALIGN, os.SEEK_CUR)  # aligned offsets allow mmap
            offset = out.tell()
            out.write(data)
            del tensor.external_data[:]
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                item = tensor.external_data.add()
                item.key, item.value = key, value


def check_onnx(path: Path, *, ir_version: int = IR_VERSION) -> None:
    """onnx.checker on the file (by path, so external data works) and the pinned IR version."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise IncompatibleEngineError(f"ONNX file {path}: expected a valid model, found: {exc}") from exc
    found = onnx.load(str(path), load_external_data=False).ir_version
    expect(found == ir_version, IncompatibleEngineError, f"ONNX IR version of {path}", ir_version, found)


def _file_stats(path: Path) -> dict[str, Any]:
    files = [path] + ([onnx_data_path(path)] if onnx_data_path(path).exists() else [])
    return {"file_stats": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def cached_onnx_sha256(path: Path) -> str:
    """The ONNX sha256 from its manifest when the files are untouched since export; otherwise recomputed."""
    manifest = read_manifest(path) or {}
    if manifest.get("onnx_sha256") and manifest.get("file_stats") == _file_stats(path)["file_stats"]:
        return str(manifest["onnx_sha256"])
    return onnx_sha256(path)


def stale_reason(path: Path, expected: dict[str, Any]) -> str | None:
    """Why the ONNX file at `path` cannot be reused for `expected` export fields, or None when it can."""
    reason, manifest = check_against_manifest(path, expected, missing="not exported yet",
                                              no_manifest="no manifest beside it")
    if reason is not None:
        return reason
    if manifest.get("file_stats") != _file_stats(path)["file_stats"] and onnx_sha256(path) != manifest.get("onnx_sha256"):
        return "files changed since export (sha256 differs from the manifest)"  # a copy with new mtimes is fine
    return None


def ensure_onnx(network: str, module: nn.Module, out_dir: str | os.PathLike, *, weights_hash: str | None = None) -> Path:
    """Reuse `out_dir`'s ONNX file for `network` when its manifest matches this module; export otherwise."""
    dtype = graph_dtype(network, module)
    target = Path(out_dir) / onnx_filename(network, dtype)
    weights_hash = weights_hash or weights_sha256(module)
    with file_lock(target):  # a racing export finishes first; then its file is reused
        reason = stale_reason(target, export_fields(network, dtype, weights_hash))
        if reason is None:
            log.debug("reusing %s", target)
            return target
        log.info("exporting %s (%s)", network, reason)
        return _export_locked(network, module, target, weights_hash=weights_hash)


def current_onnx(network: str, module: nn.Module, out_dir: str | os.PathLike, *, allow_export: bool = True,
                 weights_hash: str | None = None) -> Path:
    """The current ONNX file for `module`: exported when missing or stale, or IncompatibleEngineError if not allowed."""
    weights_hash = weights_hash or weights_sha256(module)
    if allow_export:
        return ensure_onnx(network, module, out_dir, weights_hash=weights_hash)
    dtype = graph_dtype(network, module)
    path = Path(out_dir) / onnx_filename(network, dtype)
    reason = stale_reason(path, export_fields(network, dtype, weights_hash))
    if reason is not None:
        raise IncompatibleEngineError(
            f"{path.name} in {path.parent}: expected a current export, found: {reason} (run `engine export`)")
    return path
