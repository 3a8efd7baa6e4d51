"""Making one sweep row's video: an offline `LipSync` call or a live stream fed in lockstep, timed the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import EngineError, expect
from engine.eval.sweep_settings import LIVE, SweepSetting

FRAME_TIMEOUT_S = 600.0  # a live chunk that takes longer than this is a failure, not a wait


@dataclass
class RunResult:
    """What making one row's video cost."""

    output: Path
    wall_s: float  # from the call to the last frame written (setup such as model loading excluded)
    frames: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage
    stream: dict | None = None  # live rows: latency figures of the session


def run_setting(sync, setting: SweepSetting, video: str, speech: np.ndarray, landmarks, output: Path,
                progress: Callable[[int], None] | None = None) -> RunResult:
    """Make `output` (mp4) with `setting`; `landmarks` (a LandmarkArraySource of the source's points, found
    once for the whole sweep) stand in for face detection, which every row would repeat identically.
    `progress(frames_written)` follows the row."""
    if setting.mode == LIVE:
        return _run_live(sync, setting, video, speech, landmarks, output, progress)
    result = sync.run(video, speech, output, config=setting.config, face=landmarks,
                      progress=None if progress is None else (lambda done, total: progress(done)))
    return RunResult(output, result.wall_seconds, result.num_frames, dict(result.timings))


def _run_live(sync, setting: SweepSetting, video: str, speech: np.ndarray, landmarks, output: Path,
              progress: Callable[[int], None] | None = None) -> RunResult:
    """A live session fed chunk by chunk: each chunk's speech plus the lookahead is pushed, its frames are
    taken, then the next; so every chunk that ends before the speech does is made from live features
    (deterministic, unlike pushing at wall-clock pace). The rest follows end_of_speech with exact features."""
    from engine.media import VideoWriter
    from engine.stream import StreamConfig, StreamSession
    from engine.stream.live_features import samples_needed

    config = StreamConfig(mode="live", chunk_frames=setting.chunk_frames, lookahead_ms=setting.lookahead_ms,
                          realtime=False, sync=setting.config)  # fmt: skip
    chunk = config.chunk_frames
    t0 = time.perf_counter()
    writer = None
    frames = 0
    session = StreamSession(sync, video, config, face=landmarks)
    try:

        def take(n: int | None) -> None:
            nonlocal writer, frames
            taken = 0
            while n is None or taken < n:
                frame = session.next_frame(timeout=FRAME_TIMEOUT_S)
                if frame is None:
                    expect(n is None, EngineError, f"live run {setting.name!r}", f"{n} more frames",
                           f"{taken} (no frame within {FRAME_TIMEOUT_S:g} s)")  # fmt: skip
                    return
                if writer is None:
                    h, w = frame.rgb.shape[:2]
                    writer = VideoWriter(output, w, h, fps=FPS, audio=speech, sample_rate=SAMPLE_RATE)
                writer.write(frame.rgb)
                frames += 1
                taken += 1
                if progress is not None:
                    progress(frames)

        pushed = 0
        k = 0
        while (need := samples_needed((k + 1) * chunk - 1, setting.lookahead_ms)) < speech.size:
            session.push_audio(speech[pushed:need])
            pushed = need
            take(chunk)
            k += 1
        session.push_audio(speech[pushed:])
        session.end_of_speech()
        session.finish()
        take(None)
        expect(writer is not None, EngineError, f"live run {setting.name!r}", "frames", "none")
        writer.close()
        writer = None
    finally:
        if writer is not None:
            writer.abort()
        session.close()
    stats = session.stats
    wall = time.perf_counter() - t0
    keep = ("chunk_frames", "lookahead_ms", "latency_floor_s", "chunks", "chunk_compute_s_mean", "chunk_compute_s_max")
    return RunResult(output, wall, frames, dict(stats.get("stage_seconds", {})), {k: stats.get(k) for k in keep})
