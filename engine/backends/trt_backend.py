"""TensorRT executor: a checked engine, torch CUDA tensors as I/O buffers, one CUDA graph per input shape."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from engine.errors import IncompatibleEngineError, expect
from export.specs import Geometry, get_spec

log = logging.getLogger(__name__)


@dataclass
class _ShapeSlot:
    """Static buffers (and the captured graph) for one set of input shapes."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    graph: torch.cuda.CUDAGraph | None = None


def _torch_dtype(trt, trt_dtype) -> torch.dtype:  # noqa: ANN001 - tensorrt is imported lazily
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    expect(trt_dtype in table, IncompatibleEngineError, "TensorRT tensor dtype", list(table), trt_dtype)
    return table[trt_dtype]


class TrtExecutor:
    """Deserializes an engine already checked by export.engines.ensure_engine and runs it on torch's stream.

    Each distinct set of input shapes gets static input/output buffers; with `cuda_graphs` the enqueue is
    captured once per shape and replayed (falling back to plain enqueues, logged once, if capture fails).
    """

    backend = "tensorrt"

    def __init__(self, network: str, engine_path: Path, geometry: Geometry, device: torch.device, *,
                 cuda_graphs: bool = True):
        import tensorrt as trt

        self.network, self.spec, self.geometry = network, get_spec(network), geometry
        self.device = torch.device(device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise IncompatibleEngineError(f"TensorRT engine {engine_path}: expected a loadable plan, found none (see log)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        expect(sorted(names) == sorted(self.spec.input_names + self.spec.output_names), IncompatibleEngineError,
               f"engine {Path(engine_path).name} tensors", sorted(self.spec.input_names + self.spec.output_names), sorted(names))
        self.tensor_dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.input_dtypes = {n: self.tensor_dtypes[n] for n in self.spec.input_names}
        self.cuda_graphs = cuda_graphs
        self._slots: dict[tuple, _ShapeSlot] = {}

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.spec.check_inputs(feeds, self.geometry)
        key = tuple(tuple(feeds[n].shape) for n in self.spec.input_names)
        slot = self._slots.get(key) or self._new_slot(key)
        for name, buffer in slot.inputs.items():
            buffer.copy_(feeds[name])
        if slot.graph is not None:
            slot.graph.replay()
        else:
            self._bind(slot)
            self._enqueue(torch.cuda.current_stream(self.device))
        return {name: t.clone() for name, t in slot.outputs.items()}  # slot buffers are reused by the next call

    def _bind(self, slot: _ShapeSlot) -> None:
        for name, t in slot.inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        for name, t in slot.outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())

    def _enqueue(self, stream: torch.cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise IncompatibleEngineError(f"{self.network}: TensorRT execute_async_v3 failed (see log)")

    def _new_slot(self, key: tuple) -> _ShapeSlot:
        inputs = {n: torch.empty(shape, dtype=self.tensor_dtypes[n], device=self.device)
                  for n, shape in zip(self.spec.input_names, key)}
        for name, t in inputs.items():
            self.context.set_input_shape(name, tuple(t.shape))
        outputs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.tensor_dtypes[n], device=self.device)
                   for n in self.spec.output_names}
        slot = _ShapeSlot(inputs, outputs)
        self._bind(slot)
        if self.cuda_graphs:
            slot.graph = self._capture(slot)
        self._slots[key] = slot
        return slot

    def _capture(self, slot: _ShapeSlot) -> torch.cuda.CUDAGraph | None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                self._enqueue(stream)  # one real run first: TensorRT finishes shape-dependent setup here
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._enqueue(stream)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return graph
        except Exception as exc:  # capture is an optimisation: plain enqueues still work
            log.warning("%s: CUDA graph capture failed (%s); running TensorRT without graphs", self.network, exc)
            self.cuda_graphs = False
            torch.cuda.synchronize(self.device)
            return None
