"""Warm-up at start-up: run every shape a configuration will use once, so no request pays for it.

What "a shape" is: frames per chunk x batch size x CFG on/off, and for DeepCache both the full and
the shallow U-Net pass, plus the VAE encoder/decoder at the matching row counts and the whisper
encoder on one 30 s window. For torch.compile this compiles (tails run eagerly by design, see
`CompileExecutor`); for TensorRT it creates execution contexts and captures CUDA graphs; for eager
torch one pass per configuration checks the path. The cost is logged once and `engine.ready` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from engine.constants import MEL_WINDOW_FRAMES, N_MELS
from engine.pipeline.config import SyncConfig, resolve_config

log = logging.getLogger(__name__)
WARMUP_SEED = 0


def default_configs() -> list[SyncConfig]:
    """The reference preset with and without CFG (DeepCache full + shallow passes included)."""
    reference = resolve_config("reference")
    return [reference, dataclasses.replace(reference, guidance_scale=1.0)]


def warm_up(core, configs: Iterable[SyncConfig] | None = None, *, batch_sizes: Iterable[int] | None = None,
            tails: Iterable[int] | None = None) -> dict:
    """Run each (config, frames, batch size) once on `core`'s engine; returns what ran and how long it took.

    batch_sizes: default 1..policy.max_batch when a runner is not eager torch (their cost is per shape),
    else (1,). tails: extra chunk lengths run at batch size 1; default every tail length (1..chunk-1)
    with TensorRT (CUDA graphs are captured per shape), none otherwise (compile runs tails eagerly).
    """
    engine = core.engine
    configs = list(configs) if configs is not None else default_configs()
    eager = set(engine.runners.choice.values()) == {"torch"}
    if tails is None:
        tails = range(1, max(c.chunk_frames for c in configs)) if "tensorrt" in engine.runners.choice.values() else ()
    sizes = sorted(set(batch_sizes)) if batch_sizes is not None else ([1] if eager else
                                                                      list(range(1, engine.policy.max_batch + 1)))
    t0 = time.perf_counter()
    with torch.inference_mode():
        mel = torch.zeros(1, N_MELS, MEL_WINDOW_FRAMES)
        features = core.audio_encoder(mel)[0]  # [1500,5,C]
    shapes = []
    for config in configs:
        # Two steps are enough for DeepCache's full and shallow passes (one when the run itself takes one step: it
        # never makes a shallow pass); the timesteps do not change shapes.
        short = dataclasses.replace(config, steps=min(config.steps, 2) if config.effective_deepcache else 1)
        plan = [(config.chunk_frames, n) for n in sizes] + [(f, 1) for f in sorted(set(tails))]
        for frames, n in plan:
            works = [_synthetic_work(core, features, short, frames, seed=WARMUP_SEED + i) for i in range(n)]
            futures = engine.submit_many([(w, ("warm-up", i), None) for i, w in enumerate(works)])
            for future in futures:
                future.result()
            shapes.append({"frames": frames, "batch": n, "cfg": config.uses_cfg,
                           "deepcache": config.effective_deepcache})
    seconds = time.perf_counter() - t0
    log.info("warm-up: %d shapes on %s (%s) in %.1f s", len(shapes), core.device,
             ", ".join(f"{k}={v}" for k, v in engine.runners.choice.items()), seconds)
    engine.ready = True
    return {"shapes": shapes, "seconds": round(seconds, 3), "backends": dict(engine.runners.choice)}


def _synthetic_work(core, features: torch.Tensor, config: SyncConfig, frames: int, *, seed: int):
    """A ChunkWork of random faces (its own generator), shaped exactly like a real chunk."""
    from engine.audio import frame_windows
    from engine.pipeline.chunks import prepare_chunk
    from engine.pipeline.source import SourceItem

    rng = np.random.default_rng(seed)
    r = core.resolution
    items = [SourceItem(k, np.zeros((8, 8, 3), np.uint8), np.eye(2, 3, dtype=np.float32),
                        rng.integers(0, 256, (r, r, 3), dtype=np.uint8)) for k in range(frames)]
    generator, noise = core.start_noise(seed)
    with torch.inference_mode():
        return prepare_chunk(items, list(range(frames)), frame_windows(features, 0, frames), config, noise, generator,
                             device=core.device, dtype=core.dtype, first_frame=0)
