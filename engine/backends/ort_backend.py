"""ONNX Runtime executor: CPU, CUDA or TensorRT execution providers, torch tensors in and out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from engine.errors import IncompatibleEngineError, expect
from export.specs import Geometry, get_spec

log = logging.getLogger(__name__)

_ORT_TO_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}
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


def default_providers(device: torch.device) -> list:
    """Provider list for `device` (TensorRT EP only when asked for explicitly through `providers`)."""
    if device.type == "cuda":
        return [(CUDA_PROVIDERS[0], {"device_id": device.index or 0}), CUDA_PROVIDERS[1]]
    return list(CPU_PROVIDERS)


class OrtExecutor:
    """One InferenceSession per network; CUDA runs bind torch tensors directly (no host copies)."""

    backend = "onnxruntime"

    def __init__(self, network: str, onnx_path: Path, geometry: Geometry, device: torch.device, *,
                 providers: Sequence | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.network, self.spec, self.geometry = network, get_spec(network), geometry
        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=list(providers or default_providers(self.device)))
        names = tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs())
        expect(names == (self.spec.input_names, self.spec.output_names), IncompatibleEngineError,
               f"ONNX {onnx_path} inputs/outputs", (self.spec.input_names, self.spec.output_names), names)
        self.input_dtypes = {i.name: _ORT_TO_TORCH[i.type] for i in self.session.get_inputs()}
        self.output_dtypes = {o.name: _ORT_TO_TORCH[o.type] for o in self.session.get_outputs()}
        log.debug("%s on onnxruntime providers %s", network, self.session.get_providers())

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        settings = self.spec.check_inputs(feeds, self.geometry)
        if self.device.type != "cuda":
            arrays = {name: feeds[name].detach().cpu().numpy() for name in self.spec.input_names}
            outputs = self.session.run(list(self.spec.output_names), arrays)
            return {name: torch.from_numpy(out) for name, out in zip(self.spec.output_names, outputs)}
        return self._run_cuda(feeds, self.spec.shapes(self.geometry, settings))

    def _run_cuda(self, feeds: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
        import numpy as np

        index = self.device.index or 0
        binding = self.session.io_binding()
        for name in self.spec.input_names:
            t = feeds[name]
            binding.bind_input(name, "cuda", index, _numpy_dtype(t.dtype, np), tuple(t.shape), t.data_ptr())
        outputs = {name: torch.empty(shapes[name], dtype=self.output_dtypes[name], device=self.device)
                   for name in self.spec.output_names}
        for name, t in outputs.items():
            binding.bind_output(name, "cuda", index, _numpy_dtype(t.dtype, np), tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch kernels are complete
        self.session.run_with_iobinding(binding)  # synchronous: outputs are ready on return
        return outputs


def _numpy_dtype(dtype: torch.dtype, np):  # noqa: ANN001 - numpy imported lazily by the caller
    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}[dtype]
