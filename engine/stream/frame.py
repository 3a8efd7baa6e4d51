"""One frame a streaming session emits, with its place on the 25 frames/s output timeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.constants import FPS


@dataclass
class StreamFrame:
    """One emitted frame.

    `kind` says what the frame is for: "speech" (a slot of an utterance) or "idle" (no speech being
    shown). Two flags say how it was made when it is not the usual: `dropped` (a speech or silence
    slot whose chunk missed its deadline: the source frame passed through, no lip sync) and `held`
    (an idle frame repeating the last frame shown while an utterance's first chunk is being made).
    `audio` is the frame's own slot of speech (`SAMPLES_PER_FRAME` samples), for players that play the
    session's audio with its video rather than the original speech.
    """

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
    dropped: bool = False  # its chunk was dropped for its deadline: the source frame, passed through
    held: bool = False  # a repeat of the previous frame (the timeline keeps going while a chunk is made)
    # the speech this frame shows, float32 [640] at 16 kHz (zeros for idle frames and past the end of the speech):
    # playing every frame's `audio` in order keeps sound and picture in lock-step, interruptions included
    audio: np.ndarray | None = None

    @property
    def time_s(self) -> float:
        """When this frame is shown on the output timeline (index / 25)."""
        return self.index / FPS
