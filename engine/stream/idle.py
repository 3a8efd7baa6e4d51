"""What a real-time session shows while no speech is being shown: the source passed through, or a chunk
generated from silence (a closed, still mouth); and, while an utterance's first chunk is being made, the
last frame held."""

from __future__ import annotations

import numpy as np
import torch

from engine.constants import SAMPLES_PER_FRAME
from engine.pipeline.core import OutputFrame
from engine.stream.render import ChunkRenderer, RenderedChunk


class IdleFrames:
    """The next idle frames, on the same source cursor as speech (the source position runs on)."""

    def __init__(self, renderer: ChunkRenderer, policy: str, chunk_frames: int) -> None:
        self.renderer = renderer
        self.policy = policy
        self.chunk_frames = chunk_frames
        self._silence_embeds: torch.Tensor | None = None  # [n,50,C], computed once

    def next(self, due: float | None) -> tuple[list[OutputFrame], bool]:
        """(frames, dropped): one passthrough frame, or a chunk generated with silence (made now)."""
        if self.policy == "silence":
            return self.renderer.collect(self._silence(due))
        item = next(self.renderer.cursor)
        return [OutputFrame(index=0, source_index=item.source_index, rgb=item.frame, has_face=item.has_face)], False

    @staticmethod
    def held(last, waiting_for: RenderedChunk | None) -> OutputFrame:
        """The frame to repeat while an utterance's first chunk is made: the last one shown (a passthrough of
        the chunk's first source frame, `waiting_for`, when nothing was shown yet). The cursor does not move,
        so the utterance's frames continue the source from where it paused."""
        if last is not None:
            return OutputFrame(index=0, source_index=last.source_index, rgb=last.rgb, has_face=last.has_face)
        item = waiting_for.items[0]
        return OutputFrame(index=0, source_index=item.source_index, rgb=item.frame, has_face=item.has_face)

    def _silence(self, due: float | None) -> RenderedChunk:
        from engine.audio import audio_features, frame_windows

        core, n = self.renderer.core, self.chunk_frames
        if self._silence_embeds is None:
            silence = np.zeros((n + 3) * SAMPLES_PER_FRAME, np.float32)
            self._silence_embeds = frame_windows(audio_features(torch.from_numpy(silence), core.audio_encoder), 0, n)
        generator, noise = core.start_noise(self.renderer.config.sync.seed)
        return self.renderer.render(self.renderer.cursor.take(n), range(n), self._silence_embeds, generator, noise,
                                    due)
