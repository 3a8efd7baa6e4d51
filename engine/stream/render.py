"""Turning speech and source frames into lip-synced frames, one chunk at a time: the session's path to the device.

`ChunkRenderer.render` is the one place a chunk reaches the core: it queues the chunk's device work
without waiting (`core.submit_chunk`) and returns a `RenderedChunk`; `collect` later gives its
frames. A real-time chunk carries a deadline: the wall time its first frame is due on the session's
timeline plus one chunk of slack. A chunk still queued then is dropped by the core before any
device work (its generator drew nothing, so the chunks after it are made as if it never existed)
and comes back as its source frames passed through, flagged as dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from engine.constants import FPS
from engine.errors import DeadlineExceededError, QueueFullError
from engine.pipeline.core import OutputFrame, StageTimer
from engine.runtime.heap import trim_heap
from engine.pipeline.source import Cursor, SourceItem
from engine.stream.config import StreamConfig
from engine.stream.live_features import LiveFeatures
from engine.stream.pcm import MIN_UTTERANCE_SAMPLES
from engine.stream.utterance import Utterance

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RenderedChunk:
    """One chunk handed to the core; `ChunkRenderer.collect` turns it into frames."""

    pending: object | None  # engine.pipeline.chunks.PendingChunk; None: refused at once (engine queue full)
    items: list[SourceItem]  # the source items of the frames it shows
    indices: list[int]  # their output frame numbers (within the utterance for speech)
    utterance: Utterance | None  # None: an idle chunk (generated silence)
    due: float | None  # time.time() its first frame is due on the real-time timeline; None when not real time
    on_timeline: bool  # its first frame has a fixed slot (it follows frames already on their way)
    started: float = field(default_factory=time.perf_counter)  # when making it began (features included)
    emitted: int = 0  # frames of it emitted so far
    audio: object | None = None  # speech chunks: the samples its shown frames show, float32 [frames*640]
    # time.time() of its steps, for latency breakdowns: make_start, features, source (items taken), queued,
    # device_done (its device work finished), collect (the worker began collecting), restored
    marks: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.indices)

    def done(self) -> bool:
        return self.pending is None or self.pending.done()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from whichever thread finishes the device work) once `done()`."""
        future = None if self.pending is None else self.pending.future
        if future is None:
            callback()
        else:
            future.add_done_callback(lambda _: callback())


def first_frame_breakdown(marks: dict) -> dict[str, float]:
    """Where an utterance's first-frame latency went, in seconds, from the marks of its first chunk (the parts sum
    to first_frame - first_push): `speech` until the chunk's speech had arrived (and the worker saw it),
    `waiting` for the maker thread, `features` (whisper), `source` (taking the chunk's source items: decode and
    faces, unless made ahead), `prepare` (masks, queueing), `device` (engine queue, batching, the networks),
    `collect_wait` (done, not yet collected by the worker), `restore` (pasting the faces into the frames), `emit`."""
    order = ("first_push", "ready", "make_start", "features", "source", "queued", "device_done")
    if not all(k in marks for k in order + ("collect", "restored", "first_frame")):
        return {}
    names = ("speech", "waiting", "features", "source", "prepare", "device")
    out = {name: marks[b] - marks[a] for name, a, b in zip(names, order, order[1:])}
    collected = max(marks["collect"], marks["device_done"])
    out["collect_wait"] = collected - marks["device_done"]
    out["restore"] = marks["restored"] - collected
    out["emit"] = marks["first_frame"] - marks["restored"]
    out["total"] = marks["first_frame"] - marks["first_push"]
    return {k: round(v, 4) for k, v in out.items()}


class ChunkRenderer:
    """Audio windows + the next source items -> queued chunks -> frames, with the session's chunk counters.

    All of a session's chunks are queued under one job key (`job`), so they run in submission order
    and `cancel()` drops every one still queued.
    """

    def __init__(self, core, cursor: Cursor, aligner, config: StreamConfig, timer: StageTimer, *,
                 cancelled: Callable[[], bool]) -> None:
        self.core = core
        self.cursor = cursor
        self.aligner = aligner
        self.config = config
        self.timer = timer
        self.job = object()  # the session's key in the engine core's queue
        self._cancelled = cancelled
        self.chunk_seconds: list[float] = []  # speech chunks: features, queue, device and restore
        self.late_chunks = 0  # chunks made, with a fixed slot, whose first frame came after it
        self.dropped_chunks = 0  # chunks dropped for their deadline (or refused by a full engine queue)
        self.batched_chunks = 0  # chunks that shared their device batch with other requests

    @property
    def slack_s(self) -> float:
        """How late a real-time chunk may start before it is dropped: one chunk."""
        return self.config.render_chunk / FPS

    def speech_chunk(self, utt: Utterance, samples, ended: bool,
                     timeline: Callable[[], tuple[float | None, bool]]) -> RenderedChunk | None:
        """Queue the next chunk of `utt` from its samples so far [n] float32 (`ended`: all of them); None if
        none is due. `timeline()` gives (due, on_timeline) for `render` at the moment of queueing.

        Exact offline features once the utterance has ended (so utterance mode equals
        `engine run`), live features of the current 30 s segment before that.
        """
        from engine.audio import audio_features, frame_windows, official_frame_count
        from engine.pipeline.config import output_frame_count

        t0 = time.perf_counter()
        marks = {"make_start": time.time()}
        if utt.generator is None:
            utt.generator, utt.init_noise = self.core.start_noise(self.config.sync.seed)
            utt.live = LiveFeatures(self.core.audio_encoder)
        if ended:
            if utt.exact is None and samples.size < MIN_UTTERANCE_SAMPLES:  # live remainder after a trim
                utt.total = utt.layout_total = max(utt.submitted, utt.trimmed_frames + 2)
                return None
            if utt.exact is None:
                with self.timer.measure("audio_features"):
                    utt.exact = audio_features(torch.from_numpy(samples), self.core.audio_encoder)
                official = official_frame_count(utt.exact.shape[0])
                utt.layout_total = utt.trimmed_frames + official
                utt.total = utt.trimmed_frames + output_frame_count(official, samples.size, self.config.length)
            features = utt.exact
            # the chunk as `engine run` lays it out (over the official count); only its first `emit` frames are shown
            n = min(self.config.render_chunk, utt.layout_total - utt.submitted)
            emit = min(n, utt.total - utt.submitted)
        else:
            with self.timer.measure("audio_features"):
                features = utt.live.features(samples)
            n = emit = self.config.chunk_frames
        if emit <= 0:
            return None
        start = utt.submitted - utt.trimmed_frames
        audio_embeds = frame_windows(features, start, start + n)  # [n,50,C]
        marks["features"] = time.time()
        items = self.cursor.take(n)
        marks["source"] = time.time()
        due, on_timeline = timeline()  # now: features and faces took time
        chunk = self.render(items, range(utt.submitted, utt.submitted + n), audio_embeds, utt.generator,
                            utt.init_noise, due, utterance=utt, on_timeline=on_timeline, emit=emit)
        chunk.started = t0
        chunk.marks.update(marks, queued=time.time())
        chunk.when_done(lambda: chunk.marks.setdefault("device_done", time.time()))
        return chunk

    def render(self, items: list[SourceItem], indices: range, audio_embeds: torch.Tensor,
               generator: torch.Generator, init_noise: torch.Tensor, due: float | None, *,
               utterance: Utterance | None = None, on_timeline: bool = False, emit: int | None = None) -> RenderedChunk:
        """Queue one chunk: `audio_embeds` [n,50,C] for `items`, frames numbered `indices`; returns at once.
        Only the first `emit` frames (default all) are restored and shown.

        `due`: wall time (time.time()) the chunk's first frame is due on the real-time timeline, None
        for a session without one. Real time: the core drops the chunk if it has not started
        `slack_s` after `due`, and a full engine queue drops it at once (a real-time chunk that
        cannot be queued now would be late anyway). Not real time: a full queue is waited out.
        """
        deadline = None if due is None else time.monotonic() + (due + self.slack_s - time.time())
        pending = None
        try:
            pending = self.core.submit_chunk(items, indices, audio_embeds, self.config.sync, init_noise, generator,
                                             self.aligner, self.timer, deadline=deadline, job=self.job, emit=emit,
                                             block=due is None, cancelled=self._cancelled)
        except QueueFullError as exc:
            log.warning("stream chunk frames %d..%d dropped: %s", indices[0], indices[-1], exc)
        trim_heap()  # per-chunk temporaries would otherwise pile up in glibc's arenas
        emit = len(items) if emit is None else emit
        return RenderedChunk(pending, items[:emit], list(indices)[:emit], utterance, due, on_timeline)

    def collect(self, chunk: RenderedChunk) -> tuple[Iterator[OutputFrame], bool]:
        """(frames, dropped): the chunk's finished frames, waiting for its device work. The frames come as an
        iterator that restores them a few at a time (`PendingChunk.iter_result`), so the first one can be shown
        while the rest are restored; the same frames as restoring the chunk at once.

        A dropped chunk gives its source frames unchanged. Raises CancelledError once the session is
        cancelled while waiting, or the chunk's typed error.
        """
        frames = None
        chunk.marks["collect"] = time.time()
        if chunk.pending is not None:
            try:
                frames = chunk.pending.iter_result(cancelled=self._cancelled)
            except DeadlineExceededError as exc:
                log.info("stream %s", exc)
        dropped = frames is None
        if dropped:
            self.dropped_chunks += 1
            frames = iter([OutputFrame(index=j, source_index=item.source_index, rgb=item.frame,
                                       has_face=item.has_face) for j, item in zip(chunk.indices, chunk.items)])
        elif chunk.pending.future is not None and chunk.pending.future.result().batch_size > 1:
            self.batched_chunks += 1
        if chunk.on_timeline and not dropped and chunk.due is not None and time.time() > chunk.due:
            self.late_chunks += 1
        return self._finished(chunk, frames), dropped

    def _finished(self, chunk: RenderedChunk, frames: Iterator[OutputFrame]) -> Iterator[OutputFrame]:
        """`frames`, noting when the first is ready; a speech chunk's time is in `chunk_seconds` from its first
        frame on (until then), and once all its frames are out, the whole of it."""
        entry = None
        for n, frame in enumerate(frames):
            if n == 0:
                chunk.marks["restored"] = time.time()  # the first frame is ready
                if chunk.utterance is not None:
                    entry = len(self.chunk_seconds)
                    self.chunk_seconds.append(time.perf_counter() - chunk.started)
            yield frame
        if entry is not None:
            self.chunk_seconds[entry] = time.perf_counter() - chunk.started
        trim_heap()

    def cancel(self) -> int:
        """Drop every queued chunk of the session (running ones finish); returns how many."""
        return self.core.engine.cancel_job(self.job)
