"""How a streaming session turns speech into frames: `StreamConfig`, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.constants import FPS
from engine.errors import InvalidInputError, expect
from engine.pipeline.config import DEFAULT_LENGTH, SyncConfig, check_length, resolve_config

MODES = ("utterance", "live")
IDLE_POLICIES = ("passthrough", "silence")
CHUNK_CHOICES = (8, 12, 16)
MAX_LOOKAHEAD_MS = 2000.0
CLIENT_OPTIONS = ("mode", "chunk_frames", "lookahead_ms", "idle", "realtime")  # what a server's client may set


@dataclass(frozen=True)
class StreamConfig:
    """How a session turns speech into frames."""

    mode: str = "live"
    chunk_frames: int = 16  # live chunk: 8, 12 or 16 frames (320 / 480 / 640 ms of speech)
    lookahead_ms: float = 240.0
    idle: str = "passthrough"  # what to show while no speech is being rendered
    realtime: bool = True  # emit idle frames at 25 frames/s while no speech is being rendered
    max_queued_seconds: float = 120.0  # speech accepted but not yet turned into frames
    max_output_frames: int = 250  # frames made but not yet taken by the consumer (10 s)
    whole_frame_chunks: bool = False  # refuse pushes that are not a multiple of 640 samples (strict R25)
    # frames per utterance, as `engine run`: "audio" (as long as its speech, within one frame, so the timeline
    # stays with the pushed audio) or "official" (N//2 + 2: two frames past the speech, per utterance)
    length: str = DEFAULT_LENGTH
    sync: SyncConfig = field(default_factory=lambda: resolve_config("reference"))

    def __post_init__(self) -> None:
        expect(self.mode in MODES, InvalidInputError, "stream mode", f"one of {MODES}", repr(self.mode))
        expect(self.chunk_frames in CHUNK_CHOICES, InvalidInputError, "stream chunk_frames",
               f"one of {CHUNK_CHOICES}", self.chunk_frames)
        expect(0 <= self.lookahead_ms <= MAX_LOOKAHEAD_MS, InvalidInputError, "stream lookahead_ms",
               f"0..{MAX_LOOKAHEAD_MS:g}", self.lookahead_ms)
        expect(self.idle in IDLE_POLICIES, InvalidInputError, "stream idle", f"one of {IDLE_POLICIES}",
               repr(self.idle))
        check_length(self.length, "stream length")
        expect(self.max_queued_seconds > 0, InvalidInputError, "stream max_queued_seconds", "> 0",
               self.max_queued_seconds)
        expect(self.max_output_frames >= 1, InvalidInputError, "stream max_output_frames", ">= 1",
               self.max_output_frames)
        expect(isinstance(self.sync, SyncConfig), InvalidInputError, "stream sync", "a SyncConfig",
               type(self.sync).__name__)

    @property
    def render_chunk(self) -> int:
        """Frames per U-Net call: the official 16 in utterance mode, `chunk_frames` in live mode."""
        return self.sync.chunk_frames if self.mode == "utterance" else self.chunk_frames

    @property
    def latency_floor_s(self) -> float:
        """Speech that must arrive before a live chunk can start: its length + the window's 120 ms + lookahead."""
        return self.chunk_frames / FPS + 3 / FPS + self.lookahead_ms / 1000
