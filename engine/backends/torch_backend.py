"""Eager PyTorch (the reference) and torch.compile executors over the same spec-shaped wrappers."""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import Tensor, nn

from engine.backends.base import TIMESTEP_DTYPE, AudioRunner, Runners, UNetRunner, VaeRunner
from engine.constants import CHUNK_FRAMES
from export.specs import get_spec
from export.wrappers import module_device, module_dtype, wrap

log = logging.getLogger(__name__)

# Networks whose module casts its own input (whisper keeps fp32 weights and follows the mel's dtype).
_PASS_THROUGH_DTYPE = ("audio_encoder",)
DEFAULT_MAX_GRAPHS = 8  # compiled shapes per executor (dynamo's default recompile limit is 8)


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

    def _run(self, fn, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        outputs = fn(*(feeds[name] for name in self.spec.input_names))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.spec.output_names, outputs))

    @torch.no_grad()
    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self._run(self._fn, feeds)


def torch_runners(unet: nn.Module, vae: nn.Module, audio_encoder: nn.Module) -> Runners:
    """Eager runners over loaded modules: the reference backend behind the same interface as the others."""
    return Runners(
        unet=UNetRunner(TorchExecutor("unet", unet), TorchExecutor("unet_shallow", unet)),
        vae=VaeRunner(TorchExecutor("vae_encoder", vae), TorchExecutor("vae_decoder", vae)),
        audio_encoder=AudioRunner(TorchExecutor("audio_encoder", audio_encoder)),
        choice={"unet": "torch", "vae": "torch", "audio": "torch"},
    )


def chunk_frames_of(network: str, feeds: Mapping[str, Tensor]) -> int | None:
    """Frames per request a call carries: U-Net frame axis; VAE rows (a multiple of the chunk when full)."""
    if network.startswith("unet"):
        return int(feeds["sample"].shape[2])
    if network == "vae_encoder":
        return int(feeds["pixels"].shape[0])
    if network == "vae_decoder":
        return int(feeds["latents"].shape[0])
    return None  # the audio encoder always sees 30 s windows


class CompileExecutor(TorchExecutor):
    """torch.compile of the same wrapper; CUDA graphs ("reduce-overhead") on GPU, inductor C++ on CPU.

    Shapes are static, and only full chunks are compiled: a call whose frame count is not a multiple of
    `chunk_frames` (a tail chunk) runs eagerly, and at most `max_graphs` distinct shapes are compiled
    (further ones run eagerly, logged once each). So tails of every length never pile up recompilations
    until dynamo silently falls back to eager; the engine warms the compiled shapes up at start-up.
    """

    backend = "compile"

    def __init__(self, network: str, module: nn.Module, *, mode: str | None = None,
                 compiler: str | None = None, chunk_frames: int = CHUNK_FRAMES,
                 max_graphs: int = DEFAULT_MAX_GRAPHS):
        super().__init__(network, module)
        self.mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        kwargs = {"backend": compiler} if compiler is not None else {"mode": self.mode}
        self._fn = torch.compile(self.module, dynamic=False, **kwargs)
        self._cuda_graphs = (compiler is None and self.mode in ("reduce-overhead", "max-autotune")  # both capture graphs
                             and self.device.type == "cuda")
        self.chunk_frames, self.max_graphs = chunk_frames, max_graphs
        self.compiled_shapes: set[tuple] = set()
        self.eager_shapes: set[tuple] = set()
        _allow_recompiles(max_graphs)

    def _compiles(self, feeds: Mapping[str, Tensor]) -> bool:
        shape = tuple(tuple(t.shape) for t in feeds.values())
        if shape in self.compiled_shapes:
            return True
        frames = chunk_frames_of(self.network, feeds)
        full = frames is None or frames % self.chunk_frames == 0
        if full and len(self.compiled_shapes) < self.max_graphs:
            self.compiled_shapes.add(shape)
            return True
        if shape not in self.eager_shapes:
            self.eager_shapes.add(shape)
            why = "a tail chunk" if not full else f"{self.max_graphs} shapes already compiled"
            log.info("compile %s: shape %s runs eagerly (%s)", self.network, shape, why)
        return False

    @torch.no_grad()
    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if not self._compiles(feeds):
            return self._run(self.module, feeds)
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        outputs = self._run(self._fn, feeds)
        if self._cuda_graphs:  # graph-owned buffers are overwritten by the next replay
            outputs = {name: t.clone() for name, t in outputs.items()}
        return outputs


def _allow_recompiles(graphs: int) -> None:
    """Let dynamo keep `graphs` compiled shapes per function (its limit would otherwise fall back to eager)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < graphs:
        log.info("torch._dynamo.config.%s raised from %d to %d", name, getattr(config, name), graphs)
        setattr(config, name, graphs)
