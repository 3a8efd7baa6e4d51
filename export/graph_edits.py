"""ONNX graph edits applied at export: keep normalisation statistics in fp32 inside fp16/bf16 graphs.

Eager PyTorch computes GroupNorm, LayerNorm and softmax on fp16/bf16 tensors with fp32 accumulation; an
exported fp16 graph says `InstanceNormalization` (the VAE's GroupNorm) or `Softmax` on fp16 tensors, and a
runtime may then accumulate in fp16 (overflow, NaN). This edit wraps every such node in casts (inputs to fp32,
outputs back), so each runtime (a strongly typed TensorRT build included) computes them as eager PyTorch does.
The U-Net's frame-joint GroupNorm already upcasts in the module, so its graph needs no edit there.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto, helper

LOW_PRECISION = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
# Nodes computed in fp32 when their data input is fp16/bf16: normalisations, mean reductions, softmax.
FP32_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization", "ReduceMean", "Softmax")
_NON_DATA_INPUTS = {"ReduceMean": (1,)}  # axes input (int64) is not cast
EDIT_NAME = "fp32_norms"


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor of the main graph (after ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def keep_norms_in_fp32(model: onnx.ModelProto) -> list[str]:
    """Wrap each FP32_OPS node whose data input is fp16/bf16 in casts, in place; returns the wrapped node names.

    A graph without such nodes (an fp32 export) is left unchanged.
    """
    types = value_types(model)
    graph = model.graph
    edited: list[str] = []
    new_nodes: list[Any] = []
    for index, node in enumerate(graph.node):
        low = types.get(node.input[0]) if node.input else None
        if node.op_type not in FP32_OPS or low not in LOW_PRECISION:
            new_nodes.append(node)
            continue
        tag = node.name or f"{node.op_type}_{index}"
        skip = _NON_DATA_INPUTS.get(node.op_type, ())
        for k, name in enumerate(node.input):
            if not name or k in skip or types.get(name) not in LOW_PRECISION:
                continue
            cast_out = f"{name}__fp32_for_{tag}"
            new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT, name=f"{tag}/cast_in{k}"))
            node.input[k] = cast_out
        new_nodes.append(node)
        name = node.output[0]  # LayerNormalization's optional Mean/InvStdDev are fp32 (stash_type) already
        wide = f"{name}__fp32"
        node.output[0] = wide
        new_nodes.append(helper.make_node("Cast", [wide], [name], to=low, name=f"{tag}/cast_out"))
        edited.append(tag)
    if edited:
        del graph.node[:]
        graph.node.extend(new_nodes)
        _drop_stale_value_info(graph, {o for n in new_nodes for o in n.output})
    return edited


def _drop_stale_value_info(graph: Any, produced: set[str]) -> None:
    """Remove recorded types of renamed tensors (their old type entries would contradict the casts)."""
    kept = [v for v in graph.value_info if v.name in produced and not v.name.endswith("__fp32")]
    del graph.value_info[:]
    graph.value_info.extend(kept)
