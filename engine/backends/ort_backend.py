"""ONNX Runtime executor: CPU, CUDA or TensorRT execution providers, torch tensors in and out.

Every call binds the torch tensors' memory directly (I/O binding): inputs are read and outputs written in
place on the run's device, CPU or CUDA, with no host round trip and no numpy copy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from engine.errors import IncompatibleEngineError, expect
from export.specs import Geometry, get_spec

log = logging.getLogger(__name__)

_ORT_TO_TORCH = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
    "tensor(double)": torch.float64, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool, "tensor(uint8)": torch.uint8,
}
# torch dtype -> ONNX TensorProto element type, which IOBinding takes for every type (numpy has no bfloat16).
_TORCH_TO_ONNX = {
    torch.float32: 1, torch.uint8: 2, torch.int32: 6, torch.int64: 7, torch.bool: 9, torch.float16: 10,
    torch.float64: 11, torch.bfloat16: 16,
}
CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")  # CPU only for nodes CUDA lacks
CPU_PROVIDERS = ("CPUExecutionProvider",)


def ort_unavailable_reason(device: torch.device) -> str | None:
    """Why ONNX Runtime cannot run on `device`, or None when it can."""
    try:
        import onnxruntime
    except Exception as exc:  # ImportError or a broken install
        return f"onnxruntime not importable ({type(exc).__name__}: {exc}); install the [cpu] or [gpu] extra"
    available = onnxruntime.get_available_providers()
    need = CUDA_PROVIDERS[0] if device.type == "cuda" else CPU_PROVIDERS[0]
    if need not in available:
        return f"onnxruntime {onnxruntime.__version__} lacks {need} (has {available}); install the [gpu] extra"
    return None


def ort_dtype_reason(dtype: torch.dtype) -> str | None:
    """Why a graph computing in `dtype` cannot run on ONNX Runtime, or None when it can."""
    if dtype == torch.bfloat16:
        return ("a bf16 graph: ONNX's Conv has no bfloat16 type before opset 22 and ONNX Runtime has no bf16 "
                "convolution kernels; use --dtype fp16 (CUDA) or fp32, or --backend torch / compile / tensorrt for bf16")
    return None


def default_providers(device: torch.device, *, cuda_arena_strategy: str = "kSameAsRequested") -> list:
    """Provider list for `device` (TensorRT EP only when asked for explicitly through `providers`).

    The CUDA EP's arena grows by what each allocation asks (kSameAsRequested), not to the next power of two
    (ORT's default), which can reserve up to twice the largest activation set and never return it.
    """
    if device.type == "cuda":
        return [(CUDA_PROVIDERS[0], {"device_id": device.index or 0, "arena_extend_strategy": cuda_arena_strategy}),
                CUDA_PROVIDERS[1]]
    return list(CPU_PROVIDERS)


def session_options(ort, *, cpu_mem_arena: bool = False, threads: int | None = None):  # noqa: ANN001, ANN201
    """SessionOptions of every engine session.

    The CPU arena is off by default: each session's arena keeps the high-water mark of every shape it ran and
    never gives it back, so five sessions held several times what eager torch needs for the same job
    (docs/install-notes.md, benchmarks/results/backend_memory.json). Inputs and outputs are torch tensors bound
    in place, so the arena only served intermediate activations; the memory pattern planner stays on.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    options.enable_cpu_mem_arena = cpu_mem_arena
    if threads:
        options.intra_op_num_threads = threads
    return options


class OrtExecutor:
    """One InferenceSession per network; every run binds torch tensors directly (no host or numpy copies)."""

    backend = "onnxruntime"

    def __init__(self, network: str, onnx_path: Path, geometry: Geometry, device: torch.device, *,
                 providers: Sequence | None = None, threads: int | None = None, cpu_mem_arena: bool = False,
                 cuda_arena_strategy: str = "kSameAsRequested"):
        from engine.extras import import_optional

        ort = import_optional("onnxruntime", "cpu", what=f"{network} on onnxruntime")
        self.network, self.spec, self.geometry = network, get_spec(network), geometry
        self.device = torch.device(device)
        options = session_options(ort, cpu_mem_arena=cpu_mem_arena, threads=threads)
        providers = list(providers or default_providers(self.device, cuda_arena_strategy=cuda_arena_strategy))
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        names = tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs())
        expect(names == (self.spec.input_names, self.spec.output_names), IncompatibleEngineError,
               f"ONNX {onnx_path} inputs/outputs", (self.spec.input_names, self.spec.output_names), names)
        self.input_dtypes = {i.name: _ort_dtype(i.type, f"{network} input {i.name}") for i in self.session.get_inputs()}
        self.output_dtypes = {o.name: _ort_dtype(o.type, f"{network} output {o.name}") for o in self.session.get_outputs()}
        log.debug("%s on onnxruntime providers %s", network, self.session.get_providers())

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        settings = self.spec.check_inputs(feeds, self.geometry)
        shapes = self.spec.shapes(self.geometry, settings)
        # a no-op for run_executor's feeds (already cast and placed)
        inputs = {name: feeds[name].detach().to(self.device, self.input_dtypes[name]).contiguous()
                  for name in self.spec.input_names}
        outputs = {name: torch.empty(shapes[name], dtype=self.output_dtypes[name], device=self.device)
                   for name in self.spec.output_names}
        run_bound(self.session, inputs, outputs, self.device)
        return outputs


def run_bound(session, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor], device: torch.device) -> None:  # noqa: ANN001
    """Run `session` reading `inputs` and writing `outputs` in place (contiguous torch tensors on `device`)."""
    kind, index = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)
    binding = session.io_binding()
    for name, t in inputs.items():
        binding.bind_input(name, kind, index, _TORCH_TO_ONNX[t.dtype], tuple(t.shape), t.data_ptr())
    for name, t in outputs.items():
        binding.bind_output(name, kind, index, _TORCH_TO_ONNX[t.dtype], tuple(t.shape), t.data_ptr())
    if kind == "cuda":
        torch.cuda.current_stream(device).synchronize()  # ORT runs on its own stream: inputs must be complete
    session.run_with_iobinding(binding)  # synchronous: outputs are ready on return


def _ort_dtype(ort_type: str, what: str) -> torch.dtype:
    expect(ort_type in _ORT_TO_TORCH, IncompatibleEngineError, f"{what} type", sorted(_ORT_TO_TORCH), ort_type)
    return _ORT_TO_TORCH[ort_type]
