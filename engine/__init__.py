"""latentsync-engine: a fast, faithful inference engine for LatentSync lip-sync.

`import engine` needs only the core dependencies; GPU runtimes (TensorRT,
onnxruntime-gpu, Triton) are imported lazily by the modules that use them.
"""

from engine.errors import EngineError

__version__ = "0.1.0"
__all__ = ["EngineError", "__version__"]
