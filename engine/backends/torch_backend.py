"""Eager PyTorch (the reference) and torch.compile executors over the same spec-shaped wrappers."""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import Tensor, nn

from engine.backends.base import TIMESTEP_DTYPE
from export.specs import get_spec
from export.wrappers import module_device, module_dtype, wrap

log = logging.getLogger(__name__)

# Networks whose module casts its own input (whisper keeps fp32 weights and follows the mel's dtype).
_PASS_THROUGH_DTYPE = ("audio_encoder",)


class TorchExecutor:
    """Runs the export wrapper of `network` eagerly: exactly the module the ONNX graph is traced from."""

    backend = "torch"

    def __init__(self, network: str, module: nn.Module):
        self.network = network
        self.spec = get_spec(network)
        self.module = wrap(network, module)
        self.device = module_device(module)
        dtype = None if network in _PASS_THROUGH_DTYPE else module_dtype(module)
        self.input_dtypes = {n: TIMESTEP_DTYPE if n == "timestep" else dtype for n in self.spec.input_names}
        self._fn = self.module

    @torch.no_grad()
    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs = self._fn(*(feeds[name] for name in self.spec.input_names))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.spec.output_names, outputs))


class CompileExecutor(TorchExecutor):
    """torch.compile of the same wrapper; CUDA graphs ("reduce-overhead") on GPU, inductor C++ on CPU.

    Shapes are static (one compiled graph per chunk shape, e.g. 16 frames and the shorter last chunk).
    """

    backend = "compile"

    def __init__(self, network: str, module: nn.Module, *, mode: str | None = None):
        super().__init__(network, module)
        self.mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        self._fn = torch.compile(self.module, mode=self.mode, dynamic=False)
        self._cuda_graphs = self.mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda"  # both capture

    @torch.no_grad()
    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        outputs = super().__call__(feeds)
        if self._cuda_graphs:  # graph-owned buffers are overwritten by the next replay
            outputs = {name: t.clone() for name, t in outputs.items()}
        return outputs
