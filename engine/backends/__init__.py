"""Inference backends behind one interface: torch (reference), compile, onnxruntime, tensorrt.

Optional runtimes are imported only when a backend is used, so `import engine.backends` needs core deps.
"""

from engine.backends.base import AudioRunner, Executor, Runners, UNetRunner, VaeRunner
from engine.backends.config import BackendOptions, EngineConfig, resolve_engine_config
from engine.backends.select import (
    AUTO_ORDER,
    BACKENDS,
    BackendContext,
    availability,
    create_runners,
    describe_choice,
    make_executor,
    parse_backend_request,
    select_unet_runner,
    unavailable_reason,
)

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "AudioRunner",
    "BackendContext",
    "BackendOptions",
    "EngineConfig",
    "Executor",
    "Runners",
    "UNetRunner",
    "VaeRunner",
    "availability",
    "create_runners",
    "describe_choice",
    "make_executor",
    "parse_backend_request",
    "resolve_engine_config",
    "select_unet_runner",
    "unavailable_reason",
]
