"""A streaming lip-sync session: speech chunks in, lip-synced frames out, in order, with bounded latency.

One worker thread drives the same chunked core as `engine run`:
- `utterance` mode waits for `end_of_speech()` and computes the utterance's
  features exactly as offline, so its frames equal `engine run` on the same
  audio and source (same seed, chunks of 16, ping-pong source) when the
  utterance starts at the source's first frame;
- `live` mode makes each chunk as soon as its audio plus a lookahead has
  arrived, re-encoding the current 30 s segment (see `live_features`); once
  the utterance ends, its remaining frames use the exact offline features.
The worker queues chunks on the engine core without waiting for them (chunk k+1
is queued while k runs; at most `MAX_CHUNKS_IN_FLIGHT`), so the core can batch
them with other sessions' and jobs' chunks, and emits each one's frames in order
once it is done.
Output frames lie on one 25 frames/s timeline. When no utterance is being
rendered and `realtime` is on, the session keeps emitting idle frames on that
timeline (the source passed through, or generated with silence), so a live
output never stalls; the source position runs on through idle frames. While an
utterance's first chunk is being made, the last frame is held (repeated, the
source paused), so the timeline does not stall then either and the utterance
continues the source from where it paused. A real-time chunk that has not
started one chunk after its slot on the timeline is dropped by the core: its
slots show the source passed through (`StreamFrame.dropped`).

The pieces: `SpeechQueue` (accepted speech), `ChunkRenderer` (the path to the
device), `IdleFrames`, `FrameOutput` (timeline and delivery); this module is the
public API and the worker loop that decides what to make next.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import numpy as np

from engine.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import EngineError, InvalidInputError, expect
from engine.pipeline.core import StageTimer
from engine.stream.config import StreamConfig
from engine.stream.frame import StreamFrame
from engine.stream.idle import IdleFrames
from engine.stream.live_trim import trim_finished_segment
from engine.stream.output import POLL_S, FrameOutput
from engine.stream.pcm import to_float_pcm
from engine.stream.prefetch import PrefetchCursor
from engine.stream.render import ChunkRenderer, RenderedChunk, first_frame_breakdown
from engine.stream.sources import open_source
from engine.stream.utterance import SpeechQueue, Utterance

__all__ = ["StreamConfig", "StreamFrame", "StreamSession"]

log = logging.getLogger(__name__)
MAX_CHUNKS_IN_FLIGHT = 2  # chunks a session has queued or running on the core at once (k+1 is queued while k runs)


class StreamSession:
    """Create from a loaded `LipSync` and a source: a video path, an array/iterator of frames, or an `Avatar`.

    >>> with StreamSession(sync, avatar, StreamConfig(mode="live")) as session:
    ...     session.push_audio(pcm_int16); session.end_of_speech()
    ...     for frame in session: show(frame.rgb)
    """

    def __init__(self, sync, source, config: StreamConfig | None = None, *,
                 on_frame: Callable[[StreamFrame], None] | None = None, face=None) -> None:
        expect(hasattr(sync, "core"), InvalidInputError, "stream model", "a loaded LipSync", type(sync).__name__)
        expect(config is None or isinstance(config, StreamConfig), InvalidInputError, "stream config",
               "a StreamConfig", type(config).__name__)
        self.sync = sync
        self.core = sync.core
        self.config = config or StreamConfig()
        self.on_frame = on_frame
        self.timer = StageTimer()
        aligner = self.core.new_aligner()
        # the source's items are made ahead (decode, faces), off the path from speech to the first frame
        cursor = PrefetchCursor(open_source(sync, source, face=face, aligner=aligner, timer=self.timer),
                                self.config.render_chunk)
        self.speech = SpeechQueue(self.config.max_queued_seconds)
        self.output = FrameOutput(self.config.max_output_frames, on_frame, lambda: self.speech.closed)
        self.renderer = ChunkRenderer(self.core, cursor, aligner, self.config, self.timer,
                                      cancelled=lambda: self.speech.closed or self._stopped)
        self.idle = IdleFrames(self.renderer, self.config.idle, self.config.chunk_frames)
        self.in_flight: deque[RenderedChunk] = deque()  # chunks handed to the core, in output order
        # features, faces and queueing of speech chunks run here, so the worker keeps the timeline going meanwhile
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipsync-stream-make")
        self._making: Future | None = None  # the chunk being made (one at a time: chunks of a session are in order)
        self._last_utterance: Utterance | None = None  # the utterance of the last speech frame emitted
        self._cancel_interrupted = False  # a barge-in happened: the worker drops the session's queued chunks
        self._error: BaseException | None = None
        self._stopped = False  # the worker has stopped
        self.first_frame_latency_s: list[float] = []
        self.first_chunk_marks: list[dict] = []  # per utterance: its first chunk's RenderedChunk.marks + push/frame
        self._worker = threading.Thread(target=self._work, name="lipsync-stream", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ input
    def push_audio(self, samples, *, sample_rate: int = SAMPLE_RATE, offset: int | None = None,
                   end_of_speech: bool = False) -> None:
        """Queue 16 kHz mono PCM (int16 or float32, any chunk size) for the current utterance.

        `offset`, when given, is this chunk's first sample within the session's speech; a chunk
        out of order is refused. A chunk that would overflow `max_queued_seconds` is refused at once.
        `end_of_speech=True` also ends the utterance, atomically: a whole utterance pushed this way
        never has a chunk made from partial features, even in live mode.
        """
        expect(sample_rate == SAMPLE_RATE, InvalidInputError, "audio chunk sample rate", SAMPLE_RATE, sample_rate)
        pcm = to_float_pcm(samples)
        if self.config.whole_frame_chunks:
            expect(pcm.size % SAMPLES_PER_FRAME == 0, InvalidInputError, "audio chunk length",
                   f"a multiple of {SAMPLES_PER_FRAME} samples (one 25 fps frame)", pcm.size)
        with self.speech.cond:
            self._raise_if_unusable()
            self.speech.push(pcm, offset=offset, end_of_speech=end_of_speech)

    def end_of_speech(self) -> None:
        """Mark the end of the current utterance: its remaining frames are made with the exact features."""
        with self.speech.cond:
            self._raise_if_unusable()
            self.speech.end_current()

    def interrupt(self) -> dict:
        """Barge-in: drop the queued speech, the chunks queued on the core (`cancel_job`; a chunk already on the
        device finishes and is discarded) and the frames not yet taken; idle frames follow within one chunk
        and the next pushed speech starts a new utterance, made exactly as in a fresh session.

        Returns what was dropped, {"samples", "chunks", "frames"}, and "next_utterance": the number the next
        utterance gets (a frame of a lower number that was already on its way to a consumer is stale).
        """
        with self.speech.cond:
            self._raise_if_unusable()
            samples = self.speech.interrupt()
            chunks = len(self.in_flight)
            for chunk in self.in_flight:
                if chunk.utterance is not None:
                    chunk.utterance.interrupted = True
            self.in_flight.clear()  # never collected: the core finishes a running one and nobody waits for it
            self._last_utterance = None
            self._cancel_interrupted = True
            frames = self.output.drop_queued()
            self.speech.cond.notify_all()
        log.info("stream interrupted: dropped %d queued samples, %d chunks, %d frames", samples, chunks, frames)
        return {"samples": samples, "chunks": chunks, "frames": frames, "next_utterance": self.speech.next_number}

    def finish(self) -> None:
        """No more speech: the queued utterances are completed, then the worker stops and iteration ends."""
        self.speech.finish()

    # ------------------------------------------------------------------ output
    def __iter__(self) -> Iterator[StreamFrame]:
        return self.frames()

    def frames(self, timeout: float | None = None) -> Iterator[StreamFrame]:
        """Frames in order until the session is finished or closed; `timeout` ends a wait for a frame."""
        while True:
            frame = self.next_frame(timeout)
            if frame is None:
                return
            yield frame

    def next_frame(self, timeout: float | None = None) -> StreamFrame | None:
        """The next frame, or None once the worker has stopped (or after `timeout` seconds without one).

        Raises the worker's error if it failed.
        """
        if self.on_frame is not None:
            raise InvalidInputError("stream output: expected iteration or a callback, found both")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self.output.get()
            if frame is not None:
                return frame
            if self._error is not None:
                raise self._error
            if not self._worker.is_alive() and self.output.empty():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self, *, drain: bool = False, timeout: float = 60.0) -> None:
        """Stop and release everything. `drain`: first finish the queued speech (someone must consume the
        frames, or use a callback); otherwise cancel within one chunk. After `timeout` s it cancels anyway."""
        if drain:
            self.finish()
        else:
            self.speech.close()
            self.renderer.cancel()  # queued chunks leave the engine now; a running one finishes
        if threading.current_thread() is self._worker:
            return
        deadline = time.monotonic() + timeout
        while self._worker.is_alive() and time.monotonic() < deadline:
            self._worker.join(timeout=POLL_S)
        if self._worker.is_alive():  # drain took too long: cancel
            self.speech.close()
            self.renderer.cancel()
            self._worker.join()
        self.speech.clear()
        if self.on_frame is not None or not self.speech.finishing:
            self.output.discard()

    @property
    def closed(self) -> bool:
        return self.speech.closed

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def chunk_seconds(self) -> list[float]:
        """Time to make each speech chunk (features, queue, device, restore), in order."""
        return self.renderer.chunk_seconds

    @property
    def stats(self) -> dict:
        """Latency figures: first-frame latency per utterance, per-chunk time, the floor; chunk counters:
        `late_chunks` (real time: a chunk whose first frame came after its slot on the timeline),
        `dropped_chunks` (dropped for their deadline: source frames instead), `batched_chunks` (shared a
        device batch with other requests), `held_frames` (repeated while a first chunk was made)."""
        chunks = self.chunk_seconds
        queued = self.speech.queued_samples() / SAMPLE_RATE
        return {
            "mode": self.config.mode, "chunk_frames": self.config.render_chunk,
            "lookahead_ms": self.config.lookahead_ms, "latency_floor_s": round(self.config.latency_floor_s, 4),
            "first_frame_latency_s": [round(x, 4) for x in self.first_frame_latency_s],
            "first_frame_breakdown_s": [first_frame_breakdown(m) for m in self.first_chunk_marks],
            "chunks": len(chunks), "chunk_compute_s_mean": round(float(np.mean(chunks)), 4) if chunks else None,
            "chunk_compute_s_max": round(float(np.max(chunks)), 4) if chunks else None,
            "late_chunks": self.renderer.late_chunks, "dropped_chunks": self.renderer.dropped_chunks,
            "batched_chunks": self.renderer.batched_chunks, "held_frames": self.output.held,
            "frames_emitted": self.output.emitted, "queued_speech_s": round(queued, 3),
            "stage_seconds": self.timer.as_dict(),
        }

    def _raise_if_unusable(self) -> None:
        if self._error is not None:
            raise EngineError(f"stream: the session failed earlier: {type(self._error).__name__}: {self._error}")
        if self.speech.closed or self.speech.finishing:
            raise InvalidInputError("stream: expected an open session, found it closed or finishing")

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        try:
            while True:
                step = self._next_step()
                if step is None:
                    return
                step()
        except CancelledError:  # close() while waiting for the device: a normal stop
            if not self.speech.closed:
                self._error = EngineError("stream: a chunk was cancelled outside close()")
        except BaseException as exc:  # surfaced to the consumer
            log.exception("stream worker failed")
            self._error = exc
        finally:  # the worker owns the source: release it here, however it stops (after the maker stopped)
            self._stopped = True  # a maker waiting for room in the engine queue gives up
            self._maker.shutdown(wait=True, cancel_futures=True)
            self.renderer.cancel()
            self.in_flight.clear()
            self.renderer.cursor.close()

    def _next_step(self) -> Callable[[], None] | None:
        """The next unit of work, waiting for speech, a finished chunk or the next idle frame; None to stop."""
        speech = self.speech
        with speech.cond:
            while not speech.closed:
                step = self._choose()
                if step is not None:
                    return step
                if speech.finishing and self._making is None and speech.head() is None and not self.in_flight:
                    return None
                speech.cond.wait(timeout=self.output.idle_wait(self.config.realtime and not speech.finishing))
            return None

    def _choose(self) -> Callable[[], None] | None:
        """Under the speech lock: start making the next speech chunk (on the maker thread), then pick what
        the worker does: emit a finished chunk, else an idle (or held) frame; None to wait."""
        if self._cancel_interrupted:  # here, on the worker: it is the only thread that waits on idle chunks
            self._cancel_interrupted = False
            return self._drop_interrupted
        if self._making is not None and self._making.done():
            making, self._making = self._making, None
            if making.exception() is not None:
                return making.result  # raises the maker's error in the worker
        utt = self.speech.head()
        if (utt is not None and self._making is None and len(self.in_flight) < MAX_CHUNKS_IN_FLIGHT
                and utt.frames_ready(self.config)):
            self._making = self._maker.submit(self._make_speech, utt, time.time())
            self._making.add_done_callback(lambda _: self._wake())
        if self.in_flight and self.in_flight[0].done():
            return functools.partial(self._emit_chunk, self.in_flight[0])  # interrupt() may empty in_flight
        if self.config.realtime and not self.speech.finishing and not self._speaking() and self.output.idle_due():
            if not self.in_flight and self._making is None:
                return self._make_idle
            if self.output.last is not None or self.in_flight:  # something to hold
                return self._hold
        return None

    def _speaking(self) -> bool:
        """Mid-utterance: some of its frames are out, more will come (wait for them rather than break its
        lip sync with idle frames)."""
        last = self._last_utterance
        return last is not None and not last.fully_emitted

    def _wake(self) -> None:
        with self.speech.cond:
            self.speech.cond.notify_all()

    def _timeline(self) -> tuple[float | None, bool]:
        """(due, on_timeline) of a chunk queued now. due: the wall time its first frame is due on the
        real-time timeline, after the frames already emitted and those of the chunks still being made
        (None when not real time); on_timeline: it follows frames already on their way (else held frames
        bridge its latency and it has no fixed slot)."""
        with self.speech.cond:
            on_timeline = bool(self.in_flight) or self._speaking()
            if not self.config.realtime:
                return None, on_timeline
            ahead = sum(chunk.frames - chunk.emitted for chunk in self.in_flight)
            return max(self.output.next_due, time.time()) + ahead / FPS, on_timeline

    def _make_speech(self, utt: Utterance, ready: float) -> None:
        """On the maker thread: features, source items and queueing of the next chunk of `utt` (whose speech the
        worker saw arrive at time.time() `ready`)."""
        samples, ended = self.speech.snapshot(utt)
        first = utt.submitted - utt.trimmed_frames  # the chunk's first frame within `samples`
        chunk = self.renderer.speech_chunk(utt, samples, ended, self._timeline)
        if chunk is None:
            return
        chunk.marks["ready"] = ready
        chunk.audio = frame_audio(samples, first, chunk.frames)
        with self.speech.cond:
            if utt.interrupted:  # barged in while it was being made: it leaves the core's queue, unseen
                if chunk.pending is not None:
                    chunk.pending.cancel()
                return
            self.in_flight.append(chunk)
            utt.submitted += chunk.frames
            if self.config.mode == "live":
                trim_finished_segment(utt, self.core.audio_encoder)
        chunk.when_done(self._wake)

    def _emit_chunk(self, chunk: RenderedChunk) -> None:
        utt = chunk.utterance
        frames, dropped = ([], False) if utt.interrupted else self.renderer.collect(chunk)
        for j, out in enumerate(frames):
            if self.speech.closed or utt.interrupted:
                break
            k = out.index
            self.output.emit(out.rgb, "speech", utt.number, k, out.has_face, out.source_index,
                             audio_time_s=(utt.audio_offset + k * SAMPLES_PER_FRAME) / SAMPLE_RATE,
                             final=utt.total is not None and k == utt.total - 1, dropped=dropped,
                             audio=chunk.audio[j * SAMPLES_PER_FRAME:(j + 1) * SAMPLES_PER_FRAME])
            chunk.emitted += 1
            utt.emitted += 1
            self._last_utterance = utt
            if utt.first_frame_wall is None:
                utt.first_frame_wall = time.time()
                self.first_frame_latency_s.append(utt.first_frame_wall - utt.first_push)
                self.first_chunk_marks.append({**chunk.marks, "first_push": utt.first_push,
                                               "first_frame": utt.first_frame_wall})
        with self.speech.cond:
            if self.in_flight and self.in_flight[0] is chunk:  # interrupt() may have emptied the queue already
                self.in_flight.popleft()

    def _drop_interrupted(self) -> None:
        self.renderer.cancel()

    def _hold(self) -> None:
        out = self.idle.held(self.output.last, self.in_flight[0] if self.in_flight else None)
        self.output.emit(out.rgb, "idle", None, None, out.has_face, out.source_index, held=True)

    def _make_idle(self) -> None:
        due, _ = self._timeline()
        frames, dropped = self.idle.next(due)
        for out in frames:
            self.output.emit(out.rgb, "idle", None, None, out.has_face, out.source_index, dropped=dropped)


def frame_audio(samples: np.ndarray, first: int, frames: int) -> np.ndarray:
    """The speech of `frames` frames from frame `first` of `samples` [n] float32: [frames*640], zero-padded past
    the end of the speech (the last frame of an utterance as long as its speech)."""
    out = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
    part = samples[first * SAMPLES_PER_FRAME:(first + frames) * SAMPLES_PER_FRAME]
    out[:part.size] = part
    return out
