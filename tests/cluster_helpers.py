"""Shared inputs for the batch and cluster tests: a cheap local model folder and short cuts of the demo clips.

`micro_model_dir` writes the benchmarks' micro random model as a local model directory, so `engine batch
--model DIR` loads it in every worker exactly as a user's own model folder; the properties under test
(equality with `engine run`, skipping, retries, routing) do not depend on network sizes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

FAST = {"steps": 1, "guidance": 1.0, "deepcache": 0, "seed": 7}  # the cheapest settings, as the e2e tests use
# Outputs are compared after decoding. x264 at crf > 0 does not always make the same bitstream from the same
# frames within one process (seen with the writer's LANCZOS yuv420p conversion at 360 px wide), which would
# make equal frames decode differently; lossless x264 (crf 0) decodes to exactly the frames it was given.
LOSSLESS = 0
CUT_SECONDS = 0.32  # 8 source frames; 0.32 s of speech -> 8 output frames (10 with the official length), one chunk
CUT_SIZE = (360, 640)  # small enough to be cheap, large enough for the offline face detector
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def micro_model_dir(root: Path) -> Path:
    """The benchmarks' micro random model folder (benchmarks/random_models.py), written once per root."""
    import sys

    target = root / "micro-random"
    if (target / "engine.json").is_file():
        return target
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from random_models import write_micro_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    return write_micro_model(target)


def demo_cuts(media: Path, root: Path, seconds: float = CUT_SECONDS) -> dict[str, tuple[Path, Path]]:
    """{"demo1": (video.mp4, speech.wav), "demo2": ...}: short H.264 cuts and their 16 kHz speech."""
    from engine.media import cut_clip, load_audio, write_wav

    cuts = {}
    for name in ("demo1", "demo2"):
        video, wav = root / f"{name} cut.mp4", root / f"{name} speech.wav"  # spaces on purpose (R5)
        if not video.is_file():
            cut_clip(media / f"{name}_video.mp4", video, seconds=seconds, size=CUT_SIZE)
            write_wav(wav, load_audio(media / f"{name}_audio.wav")[: round(seconds * 16000)], 16000)
        cuts[name] = (video, wav)
    return cuts


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def decoded(path: Path):
    """(frames uint8 [T,H,W,3], audio float32 [S]) of an mp4, to compare outputs by content."""
    import numpy as np

    from engine.media import iter_video_frames, load_audio

    return np.stack([f.rgb for f in iter_video_frames(path)]), load_audio(path)


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2):
    """A private Ray cluster on loopback for one test module; always shut down, also on failure."""
    from engine.cluster.ray_env import private_cluster_environment

    private_cluster_environment()  # loopback only, no usage report (for the processes Ray starts)
    import ray
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False  # the same for this process, where ray may be imported already
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        yield ray
    finally:
        ray.shutdown()
