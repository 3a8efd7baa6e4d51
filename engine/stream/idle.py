"""What a real-time session shows while no speech is being rendered: the source passed through, or a chunk
generated from silence (a closed, still mouth)."""

from __future__ import annotations

import numpy as np
import torch

from engine.constants import SAMPLES_PER_FRAME
from engine.pipeline.core import OutputFrame
from engine.stream.render import ChunkRenderer


class IdleFrames:
    """The next idle frames, on the same source cursor as speech (the source position runs on)."""

    def __init__(self, renderer: ChunkRenderer, policy: str, chunk_frames: int) -> None:
        self.renderer = renderer
        self.policy = policy
        self.chunk_frames = chunk_frames
        self._silence_embeds: torch.Tensor | None = None  # [n,50,C], computed once

    def next(self, deadline: float | None) -> list[OutputFrame]:
        """One passthrough frame, or a chunk generated with silence."""
        if self.policy == "silence":
            return self._silence(deadline)
        item = next(self.renderer.cursor)
        return [OutputFrame(index=0, source_index=item.source_index, rgb=item.frame, has_face=item.has_face)]

    def _silence(self, deadline: float | None) -> list[OutputFrame]:
        from engine.audio import audio_features, frame_windows

        core, n = self.renderer.core, self.chunk_frames
        if self._silence_embeds is None:
            silence = np.zeros((n + 3) * SAMPLES_PER_FRAME, np.float32)
            self._silence_embeds = frame_windows(audio_features(torch.from_numpy(silence), core.audio_encoder), 0, n)
        generator, noise = core.start_noise(self.renderer.config.sync.seed)
        return self.renderer.render(self.renderer.cursor.take(n), range(n), self._silence_embeds, generator, noise,
                                    deadline)
