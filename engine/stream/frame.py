"""One frame a streaming session emits, with its place on the 25 frames/s output timeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.constants import FPS


@dataclass
class StreamFrame:
    """One emitted frame."""

    index: int  # position on the session's 25 frames/s output timeline
    audio_time_s: float | None  # speech frames: time in the pushed speech (all utterances joined); idle: None
    wall_time: float  # time.time() when it was emitted
    rgb: np.ndarray  # [H,W,3] uint8
    kind: str  # "speech" or "idle"
    utterance: int | None  # utterance number for speech frames
    utterance_frame: int | None  # frame index within its utterance
    final: bool  # the last frame of its utterance
    has_face: bool
    source_index: int  # the source (or avatar) frame it was made from, ping-pong aware

    @property
    def time_s(self) -> float:
        """When this frame is shown on the output timeline (index / 25)."""
        return self.index / FPS
