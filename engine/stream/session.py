"""A streaming lip-sync session: speech chunks in, lip-synced frames out, in order, with bounded latency.

One worker thread drives the same chunked core as `engine run`:
- `utterance` mode waits for `end_of_speech()` and computes the utterance's
  features exactly as offline, so its frames equal `engine run` on the same
  audio and source (same seed, chunks of 16, ping-pong source) when the
  utterance starts at the source's first frame;
- `live` mode makes each chunk as soon as its audio plus a lookahead has
  arrived, re-encoding the current 30 s segment (see `live_features`); once
  the utterance ends, its remaining frames use the exact offline features.
Output frames lie on one 25 frames/s timeline. When no utterance is being
rendered and `realtime` is on, the session keeps emitting idle frames on that
timeline (the source passed through, or generated with silence), so a live
output never stalls; the source position runs on through idle frames.

The pieces: `SpeechQueue` (accepted speech), `ChunkRenderer` (the path to the
device), `IdleFrames`, `FrameOutput` (timeline and delivery); this module is the
public API and the worker loop that decides what to make next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import EngineError, InvalidInputError, expect
from engine.pipeline.core import StageTimer
from engine.stream.config import StreamConfig
from engine.stream.frame import StreamFrame
from engine.stream.idle import IdleFrames
from engine.stream.live_trim import trim_finished_segment
from engine.stream.output import POLL_S, FrameOutput
from engine.stream.pcm import to_float_pcm
from engine.stream.render import ChunkRenderer
from engine.stream.sources import open_source
from engine.stream.utterance import SpeechQueue, Utterance

__all__ = ["StreamConfig", "StreamFrame", "StreamSession"]

log = logging.getLogger(__name__)


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
        cursor = open_source(sync, source, face=face, aligner=aligner, timer=self.timer)
        self.speech = SpeechQueue(self.config.max_queued_seconds)
        self.output = FrameOutput(self.config.max_output_frames, on_frame, lambda: self.speech.closed)
        self.renderer = ChunkRenderer(self.core, cursor, aligner, self.config, self.timer)
        self.idle = IdleFrames(self.renderer, self.config.idle, self.config.chunk_frames)
        self._error: BaseException | None = None
        self.first_frame_latency_s: list[float] = []
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
        if threading.current_thread() is self._worker:
            return
        deadline = time.monotonic() + timeout
        while self._worker.is_alive() and time.monotonic() < deadline:
            self._worker.join(timeout=POLL_S)
        if self._worker.is_alive():  # drain took too long: cancel
            self.speech.close()
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
        """Compute time of each speech chunk (features + rendering), in order."""
        return self.renderer.chunk_seconds

    @property
    def stats(self) -> dict:
        """Latency figures: first-frame latency per utterance, per-chunk compute time, the floor."""
        chunks = self.chunk_seconds
        queued = self.speech.queued_samples() / SAMPLE_RATE
        return {
            "mode": self.config.mode, "chunk_frames": self.config.render_chunk,
            "lookahead_ms": self.config.lookahead_ms, "latency_floor_s": round(self.config.latency_floor_s, 4),
            "first_frame_latency_s": [round(x, 4) for x in self.first_frame_latency_s],
            "chunks": len(chunks), "chunk_compute_s_mean": round(float(np.mean(chunks)), 4) if chunks else None,
            "chunk_compute_s_max": round(float(np.max(chunks)), 4) if chunks else None,
            "late_chunks": self.renderer.late_chunks,
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
        speech = self.speech
        try:
            while True:
                with speech.cond:
                    job = None
                    while not speech.closed:
                        job = self._next_job()
                        if job is not None:
                            break
                        if speech.finishing and not speech.utterances:
                            return
                        speech.cond.wait(timeout=self.output.idle_wait(self.config.realtime and not speech.finishing))
                    if speech.closed:
                        return
                job()
        except BaseException as exc:  # surfaced to the consumer
            log.exception("stream worker failed")
            self._error = exc
        finally:  # the worker is the only user of the source: release it here, however it stops
            self.renderer.cursor.close()

    def _next_job(self) -> Callable[[], None] | None:
        """Under the speech lock: the next unit of work, or None to wait."""
        rendering = False
        utt = self.speech.head()
        if utt is not None:
            if utt.frames_ready(self.config):
                return lambda: self._make_speech(utt)
            rendering = utt.done > 0  # mid-utterance: wait for speech rather than break its lip sync
        if self.config.realtime and not self.speech.finishing and not rendering and self.output.idle_due():
            return self._make_idle
        return None

    def _deadline(self) -> float | None:
        """Wall time the next chunk's first frame is due on the real-time timeline (None when not real time)."""
        return self.output.next_due if self.config.realtime else None

    def _make_speech(self, utt: Utterance) -> None:
        samples, ended = self.speech.snapshot(utt)
        frames = self.renderer.speech_chunk(utt, samples, ended, self._deadline())
        if not frames:
            return
        for out in frames:
            if self.speech.closed:
                return
            k = out.index
            self.output.emit(out.rgb, "speech", utt.number, k, out.has_face, out.source_index,
                             audio_time_s=(utt.audio_offset + k * SAMPLES_PER_FRAME) / SAMPLE_RATE,
                             final=utt.total is not None and k == utt.total - 1)
            if utt.first_frame_wall is None:
                utt.first_frame_wall = time.time()
                self.first_frame_latency_s.append(utt.first_frame_wall - utt.first_push)
        with self.speech.cond:
            utt.done += len(frames)
            if self.config.mode == "live":
                trim_finished_segment(utt, self.core.audio_encoder)

    def _make_idle(self) -> None:
        for out in self.idle.next(self._deadline()):
            self.output.emit(out.rgb, "idle", None, None, out.has_face, out.source_index)
