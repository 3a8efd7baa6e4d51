"""The engine core: one owner of the device that batches and pipelines work from every front end.

- `EngineCore`: the device thread, the only caller of the network executors; chunk requests in,
  futures out; batching across jobs by shape class (`Batcher`, `ShapeClass`); `EnginePolicy` knobs.
- `JobRunner` / `JobHandle`: offline jobs as a prepare and a finish stage on their own threads.
- `AudioEncoderProxy`: the whisper encoder, callable from any thread, run on the device thread.
- `warm_up`: every shape a run will use, before the first request.
"""

from engine.runtime.batcher import Batcher
from engine.runtime.engine import ChunkOutput, EngineCore, EngineStats
from engine.runtime.jobs import JobHandle, JobRunner
from engine.runtime.policy import EnginePolicy
from engine.runtime.proxies import AudioEncoderProxy
from engine.runtime.requests import ChunkWork, Request, ShapeClass

__all__ = [
    "AudioEncoderProxy", "Batcher", "ChunkOutput", "ChunkWork", "EngineCore", "EnginePolicy", "EngineStats",
    "JobHandle", "JobRunner", "Request", "ShapeClass",
]
