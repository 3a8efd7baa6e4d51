"""The speech a session has accepted: one `Utterance` per stretch of speech, in a `SpeechQueue` shared by the
pushing thread and the session's worker."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np
import torch

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import InvalidInputError, QueueFullError, expect
from engine.stream.config import StreamConfig
from engine.stream.live_features import LiveFeatures, samples_needed
from engine.stream.live_trim import SEGMENT_SAMPLES
from engine.stream.pcm import MIN_UTTERANCE_SAMPLES, PcmBuffer

log = logging.getLogger(__name__)


class Utterance:
    """One utterance: its samples, how far rendering got, and the state that makes its frames faithful."""

    def __init__(self, number: int, max_samples: int, audio_offset: int) -> None:
        self.number = number
        self.pcm = PcmBuffer(max_samples)
        self.audio_offset = audio_offset  # samples pushed before this utterance
        self.ended = False
        self.first_push = time.time()
        self.submitted = 0  # frames whose chunk has been handed to the core (made or being made)
        self.emitted = 0  # frames emitted so far
        self.total: int | None = None  # frames it has (StreamConfig.length), known once the exact features are made
        self.layout_total: int | None = None  # the official count: chunks are laid out over it, as `engine run`
        self.exact: torch.Tensor | None = None  # offline features [N,5,C], once ended
        self.live: LiveFeatures | None = None
        self.generator: torch.Generator | None = None  # the utterance's own random stream (offline order)
        self.init_noise: torch.Tensor | None = None  # [1,4,1,h,w], shared by every frame
        self.first_frame_wall: float | None = None
        self.trimmed_frames = 0  # live: frames whose 30 s segments were dropped from the front of `pcm`
        self.interrupted = False  # dropped by a barge-in (StreamSession.interrupt): its frames are never shown

    @property
    def fully_submitted(self) -> bool:
        """Every chunk of the utterance has been handed to the core (nothing left to make)."""
        return self.total is not None and self.submitted >= self.total

    @property
    def fully_emitted(self) -> bool:
        return self.total is not None and self.emitted >= self.total

    @property
    def queued_samples(self) -> int:
        """Samples accepted but not yet turned into frames."""
        return max(0, len(self.pcm) - (self.submitted - self.trimmed_frames) * SAMPLES_PER_FRAME)

    def frames_ready(self, config: StreamConfig) -> int:
        """Frames the next chunk can make now (0: wait for more speech or for the end of the utterance)."""
        if self.ended:
            return config.render_chunk if self.total is None else min(config.render_chunk, self.total - self.submitted)
        if config.mode == "utterance":
            return 0
        last = self.submitted + config.chunk_frames - 1 - self.trimmed_frames
        return config.chunk_frames if len(self.pcm) >= samples_needed(last, config.lookahead_ms) else 0


class SpeechQueue:
    """Utterances accepted but not yet rendered, bounded by `max_queued_seconds` of speech.

    A monitor: every method takes `cond` (re-entrant, so a caller may hold it around
    several calls); the worker waits on `cond` for speech, `finishing` or `closed`.
    """

    def __init__(self, max_queued_seconds: float) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.utterances: deque[Utterance] = deque()
        self.max_queued_seconds = max_queued_seconds
        self.max_samples = int(max_queued_seconds * SAMPLE_RATE)
        self.pushed = 0  # samples pushed over the session
        self.closed = False  # cancelled: the worker stops within a chunk
        self.finishing = False  # no more speech: the worker completes the queue, then stops
        self._next_number = 0

    @property
    def next_number(self) -> int:
        """The number the next utterance opened gets."""
        return self._next_number

    def queued_samples(self) -> int:
        with self.cond:
            return sum(u.queued_samples for u in self.utterances)

    def push(self, pcm: np.ndarray, *, offset: int | None = None, end_of_speech: bool = False) -> None:
        """Append float32 samples [n] to the open utterance (opening one if needed); see StreamSession.push_audio."""
        with self.cond:
            if offset is not None:
                expect(offset == self.pushed, InvalidInputError, "audio chunk offset",
                       f"{self.pushed} (the next sample)", offset)
            queued = self.queued_samples()
            if queued + pcm.size > self.max_samples:
                raise QueueFullError(
                    f"speech queue: expected at most {self.max_queued_seconds:g} s waiting, found "
                    f"{queued / SAMPLE_RATE:.2f} s waiting + {pcm.size / SAMPLE_RATE:.2f} s pushed")
            if pcm.size and (not self.utterances or self.utterances[-1].ended):
                # the buffer also holds up to two 30 s segments of already-rendered live context
                self.utterances.append(Utterance(self._next_number, self.max_samples + 2 * SEGMENT_SAMPLES,
                                                 self.pushed))
                self._next_number += 1
            if pcm.size:
                self.utterances[-1].pcm.append(pcm)
                self.pushed += pcm.size
            if end_of_speech:
                self.end_current()
            self.cond.notify_all()

    def end_current(self) -> None:
        """End the open utterance; one too short to have a single feature row is dropped (InvalidInputError)."""
        with self.cond:
            self.cond.notify_all()
            if not self.utterances or self.utterances[-1].ended:
                return
            utt = self.utterances[-1]
            utt.ended = True
            if len(utt.pcm) < MIN_UTTERANCE_SAMPLES and utt.submitted == 0:
                self.utterances.pop()
                raise InvalidInputError(f"utterance {utt.number}: expected at least {MIN_UTTERANCE_SAMPLES} "
                                        f"samples (20 ms), found {len(utt.pcm)}; it was dropped")

    def finish(self) -> None:
        """No more speech: every utterance ends (a too-short last one is dropped with a warning)."""
        with self.cond:
            for utt in self.utterances:
                utt.ended = True
            if self.utterances and self.utterances[-1].submitted == 0 \
                    and len(self.utterances[-1].pcm) < MIN_UTTERANCE_SAMPLES:
                dropped = self.utterances.pop()
                log.warning("utterance %d dropped: %d samples, fewer than %d (20 ms)", dropped.number,
                            len(dropped.pcm), MIN_UTTERANCE_SAMPLES)
            self.finishing = True
            self.cond.notify_all()

    def close(self) -> None:
        """Cancel: the worker stops at its next check."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def interrupt(self) -> int:
        """Barge-in: drop every utterance (ended and open); the next push opens a new one. Returns the
        samples dropped that had not been turned into frames yet."""
        with self.cond:
            dropped = self.queued_samples()
            for utt in self.utterances:
                utt.interrupted = utt.ended = True
            self.utterances.clear()
            self.cond.notify_all()
            return dropped

    def clear(self) -> None:
        with self.cond:
            self.utterances.clear()
            self.closed = True

    def head(self) -> Utterance | None:
        """The oldest utterance with frames left to make (fully submitted ones leave the queue)."""
        with self.cond:
            while self.utterances and self.utterances[0].fully_submitted:
                self.utterances.popleft()
            return self.utterances[0] if self.utterances else None

    def snapshot(self, utt: Utterance) -> tuple[np.ndarray, bool]:
        """(samples so far [n] float32, ended) of `utt`, consistent with each other."""
        with self.cond:
            return utt.pcm.array(), utt.ended
