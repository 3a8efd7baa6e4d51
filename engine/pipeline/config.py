"""Generation settings and presets: what the denoising loop does, independent of models and media."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.constants import CHUNK_FRAMES, SAMPLES_PER_FRAME
from engine.errors import InvalidInputError, expect
from engine.scheduler import MAX_STEPS

OFFICIAL_SEED = 1247
# Output length: "audio" = as long as the speech (within one frame; the default), "official" = N//2 + 2
# frames from N whisper feature rows, two frames (80 ms) longer than the speech (the official rule).
LENGTH_POLICIES = ("audio", "official")
DEFAULT_LENGTH = "audio"


# Output audio: "source" = the speech file's own audio (its rate and channels, trimmed or padded to the video),
# "model" = the 16 kHz mono signal the model hears (the only choice when the speech was given as samples).
OUTPUT_AUDIO = ("source", "model")
DEFAULT_OUTPUT_AUDIO = "source"


def check_output_audio(output_audio: str, what: str = "output_audio") -> None:
    """InvalidInputError unless `output_audio` is one of OUTPUT_AUDIO."""
    expect(output_audio in OUTPUT_AUDIO, InvalidInputError, what, f"one of {OUTPUT_AUDIO}", repr(output_audio))


def check_length(length: str, what: str = "length") -> None:
    """InvalidInputError unless `length` is a known output-length policy (the one check every front end calls)."""
    expect(length in LENGTH_POLICIES, InvalidInputError, what, f"one of {LENGTH_POLICIES}", repr(length))


def output_frame_count(official_frames: int, num_samples: int, length: str = DEFAULT_LENGTH) -> int:
    """Frames to output: the official count, or the speech's length in 25 fps frames (rounded up, so no
    speech is cut; never more than the official count, whose chunk layout is kept so frames do not change)."""
    check_length(length)
    if length == "official":
        return official_frames
    return max(1, min(official_frames, -(-num_samples // SAMPLES_PER_FRAME)))


@dataclass(frozen=True)
class SyncConfig:
    """How one lip-sync run denoises.

    `seed` drives a private torch generator on the run's device: it draws the
    initial noise frame once, then per chunk the VAE posterior samples of the
    masked faces and of the reference faces — the official order, so a run on
    the same device type with the same seed reproduces the official frames.
    """

    steps: int = 20
    guidance_scale: float = 1.5
    deepcache_interval: int | None = 3
    seed: int = OFFICIAL_SEED
    chunk_frames: int = CHUNK_FRAMES
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not (1 <= self.steps <= MAX_STEPS):
            raise InvalidInputError(f"steps: expected 1..{MAX_STEPS}, found {self.steps}")
        if not (0.0 <= self.guidance_scale <= 20.0):
            raise InvalidInputError(f"guidance_scale: expected 0..20, found {self.guidance_scale}")
        if self.deepcache_interval is not None and self.deepcache_interval < 1:
            raise InvalidInputError(
                f"deepcache_interval: expected None or >= 1, found {self.deepcache_interval}"
            )
        if not (1 <= self.chunk_frames <= 24):
            raise InvalidInputError(f"chunk_frames: expected 1..24 (temporal PE length), found {self.chunk_frames}")
        if self.seed < 0:
            raise InvalidInputError(f"seed: expected a non-negative integer, found {self.seed}")

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def effective_deepcache(self) -> int | None:
        """DeepCache interval that changes anything (1 means every step is full)."""
        if self.deepcache_interval is None or self.deepcache_interval <= 1:
            return None
        return self.deepcache_interval

    def replace(self, **changes) -> "SyncConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS: dict[str, SyncConfig] = {
    # The official settings of inference.sh / gradio_app.py.
    "reference": SyncConfig(steps=20, guidance_scale=1.5, deepcache_interval=3, seed=OFFICIAL_SEED),
    # Fewer steps with DeepCache: about 1.8x less U-Net work than `reference` (4 full + 6 shallow passes vs 7 + 13).
    # Its quality cost is not yet measured on the real weights (see docs/cli.md: presets).
    "fast": SyncConfig(steps=10, guidance_scale=1.5, deepcache_interval=3, seed=OFFICIAL_SEED),
}


def resolve_config(preset: str = "reference", **overrides) -> SyncConfig:
    """A preset with explicit overrides applied (None means keep the preset's value)."""
    if preset not in PRESETS:
        raise InvalidInputError(f"preset: expected one of {sorted(PRESETS)}, found {preset!r}")
    disable_deepcache = overrides.pop("deepcache_off", False)
    config = PRESETS[preset].replace(**overrides)
    if disable_deepcache:
        config = dataclasses.replace(config, deepcache_interval=None)
    return config
