"""Turning speech and source frames into lip-synced frames, one chunk at a time: the session's path to the device.

`ChunkRenderer.render` is the one place a chunk is handed to the core. Every chunk
carries its deadline on the session's real-time timeline (the wall time its first
frame is due), so moving to an asynchronous, deadline-aware core submission
changes that one method.
"""

from __future__ import annotations

import time

import torch

from engine.pipeline.core import OutputFrame, StageTimer
from engine.pipeline.heap import trim_heap
from engine.pipeline.source import Cursor, SourceItem
from engine.stream.config import StreamConfig
from engine.stream.live_features import LiveFeatures
from engine.stream.pcm import MIN_UTTERANCE_SAMPLES
from engine.stream.utterance import Utterance


class ChunkRenderer:
    """Audio windows + the next source items -> frames, with per-chunk compute times and late-chunk counts."""

    def __init__(self, core, cursor: Cursor, aligner, config: StreamConfig, timer: StageTimer) -> None:
        self.core = core
        self.cursor = cursor
        self.aligner = aligner
        self.config = config
        self.timer = timer
        self.chunk_seconds: list[float] = []  # speech chunks: features + rendering
        self.late_chunks = 0  # chunks finished after their deadline

    def speech_chunk(self, utt: Utterance, samples, ended: bool, deadline: float | None) -> list[OutputFrame]:
        """The next chunk of `utt` from its samples so far [n] float32 (`ended`: all of them); [] if none is due.

        Exact offline features once the utterance has ended (so utterance mode equals
        `engine run`), live features of the current 30 s segment before that.
        """
        from engine.audio import audio_features, frame_windows, official_frame_count

        t0 = time.perf_counter()
        if utt.generator is None:
            utt.generator, utt.init_noise = self.core.start_noise(self.config.sync.seed)
            utt.live = LiveFeatures(self.core.audio_encoder)
        if ended:
            if utt.exact is None and samples.size < MIN_UTTERANCE_SAMPLES:  # live remainder after a trim
                utt.total = max(utt.done, utt.trimmed_frames + 2)
                return []
            if utt.exact is None:
                with self.timer.measure("audio_features"):
                    utt.exact = audio_features(torch.from_numpy(samples), self.core.audio_encoder)
                utt.total = utt.trimmed_frames + official_frame_count(utt.exact.shape[0])
            features = utt.exact
            n = min(self.config.render_chunk, utt.total - utt.done)
        else:
            with self.timer.measure("audio_features"):
                features = utt.live.features(samples)
            n = self.config.chunk_frames
        if n <= 0:
            return []
        start = utt.done - utt.trimmed_frames
        audio_embeds = frame_windows(features, start, start + n)  # [n,50,C]
        frames = self.render(self.cursor.take(n), range(utt.done, utt.done + n), audio_embeds, utt.generator,
                             utt.init_noise, deadline)
        self.chunk_seconds.append(time.perf_counter() - t0)
        return frames

    def render(self, items: list[SourceItem], indices: range, audio_embeds: torch.Tensor,
               generator: torch.Generator, init_noise: torch.Tensor, deadline: float | None) -> list[OutputFrame]:
        """One chunk through the core: `audio_embeds` [n,50,C] for `items`, frames numbered `indices`.

        `deadline`: wall time (time.time()) the chunk's first frame is due on the real-time
        timeline, None for a session without one. The core runs the chunk now; with a
        deadline-aware core this becomes `core.submit_chunk(..., deadline=deadline).result()`.
        """
        frames = self.core.sync_chunk(items, indices, audio_embeds, self.config.sync, init_noise, generator,
                                      self.aligner, self.timer)
        trim_heap()  # per-chunk temporaries would otherwise pile up in glibc's arenas
        if deadline is not None and time.time() > deadline:
            self.late_chunks += 1
        return frames
