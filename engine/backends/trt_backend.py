"""TensorRT executor: a checked engine, torch CUDA tensors as I/O buffers, one execution context per input shape.

A CUDA graph bakes in the kernels TensorRT chose for the shapes set on its context when it was captured.
Replaying it after `set_input_shape` reconfigured that context for another shape can run with the other
shape's state, so every distinct input shape gets its own execution context, its own static buffers and its
own graph (as TensorRT's diffusion demo does), and a context's shapes are set exactly once. The contexts
share one scratch (activation) buffer: calls on one executor run one at a time on one stream (the engine
core's device thread), so they never use it at the same time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from engine.errors import IncompatibleEngineError, InvalidInputError, expect
from export.specs import Geometry, get_spec

log = logging.getLogger(__name__)

MAX_SHAPES = 64  # distinct input shapes per executor (16 tail lengths x CFG on/off fit many times over)


@dataclass
class _ShapeSlot:
    """One input shape: its execution context (shapes set once), static buffers and captured graph."""

    context: Any  # tensorrt.IExecutionContext
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    graph: torch.cuda.CUDAGraph | None = None


def _torch_dtype(trt, trt_dtype) -> torch.dtype:  # noqa: ANN001 - tensorrt is imported lazily
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    expect(trt_dtype in table, IncompatibleEngineError, "TensorRT tensor dtype", list(table), trt_dtype)
    return table[trt_dtype]


def _stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


class TrtExecutor:
    """Deserializes an engine already checked by export.engines.ensure_engine and runs it on torch's stream.

    With `cuda_graphs` each shape's enqueue is captured once and replayed (falling back to plain enqueues,
    logged once, if capture fails).
    """

    backend = "tensorrt"

    def __init__(self, network: str, engine_path: Path, geometry: Geometry, device: torch.device, *,
                 cuda_graphs: bool = True, runtime_module: Any = None):
        trt = runtime_module
        if trt is None:
            from engine.extras import import_optional

            trt = import_optional("tensorrt", "trt", what=f"{network} on TensorRT")

        self.network, self.spec, self.geometry = network, get_spec(network), geometry
        self.device = torch.device(device)
        self.engine_path = Path(engine_path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with _on_device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise IncompatibleEngineError(f"TensorRT engine {engine_path}: expected a loadable plan, found none (see log)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        expect(sorted(names) == sorted(self.spec.input_names + self.spec.output_names), IncompatibleEngineError,
               f"engine {Path(engine_path).name} tensors", sorted(self.spec.input_names + self.spec.output_names), sorted(names))
        self.tensor_dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.input_dtypes = {n: self.tensor_dtypes[n] for n in self.spec.input_names}
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._slots: dict[tuple, _ShapeSlot] = {}
        self._scratch: Tensor | None = None  # activation memory shared by every slot's context

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.spec.check_inputs(feeds, self.geometry)
        key = tuple(tuple(feeds[n].shape) for n in self.spec.input_names)
        slot = self._slots.get(key) or self._new_slot(key)
        for name, buffer in slot.inputs.items():
            buffer.copy_(feeds[name])
        if slot.graph is not None:
            slot.graph.replay()
        else:
            self._enqueue(slot.context, _stream_handle(self.device))
        return {name: t.clone() for name, t in slot.outputs.items()}  # slot buffers are reused by the next call

    @property
    def num_contexts(self) -> int:
        return len(self._slots)

    def _enqueue(self, context, stream: int) -> None:  # noqa: ANN001 - tensorrt.IExecutionContext
        if not context.execute_async_v3(stream):
            raise IncompatibleEngineError(f"{self.network}: TensorRT execute_async_v3 failed (see log)")

    def _new_context(self):  # noqa: ANN202 - tensorrt.IExecutionContext
        """A context without its own activation memory when TensorRT allows it (all slots share one buffer)."""
        strategy = getattr(getattr(self._trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        if strategy is None:
            return self.engine.create_execution_context()
        context = self.engine.create_execution_context(strategy)
        size = int(getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size)
        if self._scratch is None:
            self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        if hasattr(context, "set_device_memory"):
            context.set_device_memory(self._scratch.data_ptr(), size)
        else:  # TensorRT 10.0
            context.device_memory = self._scratch.data_ptr()
        return context

    def _new_slot(self, key: tuple) -> _ShapeSlot:
        expect(len(self._slots) < MAX_SHAPES, InvalidInputError, f"{self.network} distinct input shapes",
               f"at most {MAX_SHAPES} per executor", len(self._slots) + 1)
        with _on_device(self.device):
            context = self._new_context()
        inputs = {n: torch.empty(shape, dtype=self.tensor_dtypes[n], device=self.device)
                  for n, shape in zip(self.spec.input_names, key)}
        for name, t in inputs.items():
            if not context.set_input_shape(name, tuple(t.shape)):
                raise InvalidInputError(f"{self.network}.{name}: expected a shape inside the engine's profile, "
                                        f"found {tuple(t.shape)} (rebuild with `engine build --frames/--batch`)")
        outputs = {n: torch.empty(tuple(context.get_tensor_shape(n)), dtype=self.tensor_dtypes[n], device=self.device)
                   for n in self.spec.output_names}
        for name, t in {**inputs, **outputs}.items():
            context.set_tensor_address(name, t.data_ptr())
        slot = _ShapeSlot(context, inputs, outputs)
        if self.cuda_graphs:
            slot.graph = self._capture(slot)
        self._slots[key] = slot
        return slot

    def _capture(self, slot: _ShapeSlot) -> torch.cuda.CUDAGraph | None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream):
                self._enqueue(slot.context, stream.cuda_stream)  # one real run first: TensorRT's lazy setup
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._enqueue(slot.context, stream.cuda_stream)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return graph
        except Exception as exc:  # capture is an optimisation: plain enqueues still work
            log.warning("%s: CUDA graph capture failed (%s); running TensorRT without graphs", self.network, exc)
            self.cuda_graphs = False
            torch.cuda.synchronize(self.device)
            return None



def _on_device(device: torch.device):  # noqa: ANN202 - a context manager
    """torch.cuda.device(d) for CUDA devices; nothing otherwise (fake runtimes in CPU tests)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
