"""ONNX and TensorRT builders for the LatentSync networks (specs drive export, build and runtime)."""

from export.onnx_export import IR_VERSION, OPSET, ensure_onnx, export_onnx, onnx_filename
from export.specs import NETWORK_GROUPS, SPECS, BuildShape, Geometry, NetworkSpec, ShapeSettings, get_spec
from export.wrappers import geometry_of, wrap

__all__ = [
    "IR_VERSION",
    "NETWORK_GROUPS",
    "OPSET",
    "SPECS",
    "BuildShape",
    "Geometry",
    "NetworkSpec",
    "ShapeSettings",
    "ensure_onnx",
    "export_onnx",
    "geometry_of",
    "get_spec",
    "onnx_filename",
    "wrap",
]
