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
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.constants import FPS, HOP_LENGTH, MEL_WINDOW_FRAMES, SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import EngineError, InvalidInputError, QueueFullError, expect
from engine.pipeline.config import SyncConfig, resolve_config
from engine.pipeline.core import StageTimer
from engine.pipeline.heap import trim_heap
from engine.stream.live_features import LiveFeatures, samples_needed
from engine.stream.pcm import MIN_UTTERANCE_SAMPLES, PcmBuffer, to_float_pcm

log = logging.getLogger(__name__)

SEGMENT_SAMPLES = MEL_WINDOW_FRAMES * HOP_LENGTH  # 30 s
SEGMENT_FRAMES = SEGMENT_SAMPLES // SAMPLES_PER_FRAME  # 750 frames
SEGMENT_DONE_FRAMES = SEGMENT_FRAMES + 2  # frames whose windows still reach into the segment before
MODES = ("utterance", "live")
IDLE_POLICIES = ("passthrough", "silence")
CHUNK_CHOICES = (8, 12, 16)
MAX_LOOKAHEAD_MS = 2000.0
POLL_S = 0.05  # how often blocked waits re-check for close()
IDLE_MIN_WAIT_S = 0.005  # idle frame due but the consumer has not taken the last one yet




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
    sync: SyncConfig = field(default_factory=lambda: resolve_config("reference"))

    def __post_init__(self) -> None:
        expect(self.mode in MODES, InvalidInputError, "stream mode", f"one of {MODES}", repr(self.mode))
        expect(self.chunk_frames in CHUNK_CHOICES, InvalidInputError, "stream chunk_frames",
               f"one of {CHUNK_CHOICES}", self.chunk_frames)
        expect(0 <= self.lookahead_ms <= MAX_LOOKAHEAD_MS, InvalidInputError, "stream lookahead_ms",
               f"0..{MAX_LOOKAHEAD_MS:g}", self.lookahead_ms)
        expect(self.idle in IDLE_POLICIES, InvalidInputError, "stream idle", f"one of {IDLE_POLICIES}",
               repr(self.idle))
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


@dataclass
class StreamFrame:
    """One emitted frame."""

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

    @property
    def time_s(self) -> float:
        """When this frame is shown on the output timeline (index / 25)."""
        return self.index / FPS


class _Utterance:
    def __init__(self, number: int, max_samples: int, audio_offset: int) -> None:
        self.number = number
        self.pcm = PcmBuffer(max_samples)
        self.audio_offset = audio_offset  # samples pushed before this utterance
        self.ended = False
        self.first_push = time.time()
        self.done = 0  # frames made so far
        self.total: int | None = None  # official frame count, known once the exact features are made
        self.exact: torch.Tensor | None = None  # offline features, once ended
        self.live: LiveFeatures | None = None
        self.generator = None
        self.init_noise = None
        self.first_frame_wall: float | None = None
        self.trimmed_frames = 0  # live: frames whose 30 s segments were dropped from the front of `pcm`

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total


def _peek_frames(frames) -> Iterator:
    """Validate the first frame of an iterator source now (R25), then yield all of them."""
    from engine.pipeline.source import as_rgb_frame

    frames = iter(frames)
    first = next(frames, None)
    expect(first is not None, InvalidInputError, "stream source", "at least one frame", "none")
    as_rgb_frame(first, 0)
    return itertools.chain([first], frames)


class StreamSession:
    """Create from a loaded `LipSync` and a source: a video path, an array/iterator of frames, or an `Avatar`.

    >>> with StreamSession(sync, avatar, StreamConfig(mode="live")) as session:
    ...     session.push_audio(pcm_int16); session.end_of_speech()
    ...     for frame in session: show(frame.rgb)
    """

    def __init__(self, sync, source, config: StreamConfig | None = None, *,
                 on_frame: Callable[[StreamFrame], None] | None = None, face=None) -> None:
        from engine.stream.avatar import Avatar, AvatarCursor

        expect(hasattr(sync, "core"), InvalidInputError, "stream model", "a loaded LipSync", type(sync).__name__)
        expect(config is None or isinstance(config, StreamConfig), InvalidInputError, "stream config",
               "a StreamConfig", type(config).__name__)
        self.sync = sync
        self.core = sync.core
        self.config = config or StreamConfig()
        self.on_frame = on_frame
        self.timer = StageTimer()
        self._aligner = self.core.new_aligner()
        self._frames = None
        if isinstance(source, Avatar):
            source.check_compatible(self.core, getattr(sync.models, "name", "?"))
            self._cursor = AvatarCursor(source)
        else:
            from engine.pipeline.faces import make_landmark_source
            from engine.pipeline.source import SourceCursor

            expect(source is not None and not isinstance(source, (int, float, bytes)), InvalidInputError,
                   "stream source", "a video path, frames [T,H,W,3] uint8, an iterator of frames or an Avatar",
                   type(source).__name__)
            frames, _, _ = sync._open_video(source)
            self._frames = _peek_frames(frames)
            faces = make_landmark_source(face if face is not None else sync.face, self.core.resolution)
            self._cursor = SourceCursor(self._frames, faces, self._aligner, timer=self.timer)
        self._lock = threading.Condition()
        self._utterances: deque[_Utterance] = deque()
        self._next_utterance = 0
        self._pushed = 0  # samples pushed over the session
        self._out: queue.Queue = queue.Queue(maxsize=self.config.max_output_frames)
        self._closed = False
        self._finishing = False
        self._error: BaseException | None = None
        self._emitted = 0
        self._next_due = time.time()  # wall time the next frame of the timeline is due
        self._silence_embeds: torch.Tensor | None = None
        self.chunk_seconds: list[float] = []
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
        max_samples = int(self.config.max_queued_seconds * SAMPLE_RATE)
        with self._lock:
            self._raise_if_unusable()
            if offset is not None:
                expect(offset == self._pushed, InvalidInputError, "audio chunk offset",
                       f"{self._pushed} (the next sample)", offset)
            queued = self._queued_samples()
            if queued + pcm.size > max_samples:
                raise QueueFullError(
                    f"speech queue: expected at most {self.config.max_queued_seconds:g} s waiting, found "
                    f"{queued / SAMPLE_RATE:.2f} s waiting + {pcm.size / SAMPLE_RATE:.2f} s pushed")
            if pcm.size and (not self._utterances or self._utterances[-1].ended):
                # the buffer also holds up to two 30 s segments of already-rendered live context
                self._utterances.append(_Utterance(self._next_utterance, max_samples + 2 * SEGMENT_SAMPLES,
                                                   self._pushed))
                self._next_utterance += 1
            if pcm.size:
                self._utterances[-1].pcm.append(pcm)
                self._pushed += pcm.size
            if end_of_speech:
                self._end_utterance()
            self._lock.notify_all()

    def _queued_samples(self) -> int:
        """Speech accepted but not yet turned into frames (under the lock)."""
        return sum(max(0, len(u.pcm) - (u.done - u.trimmed_frames) * SAMPLES_PER_FRAME) for u in self._utterances)

    def end_of_speech(self) -> None:
        """Mark the end of the current utterance: its remaining frames are made with the exact features."""
        with self._lock:
            self._raise_if_unusable()
            self._end_utterance()
            self._lock.notify_all()

    def _end_utterance(self) -> None:
        """Under the lock: end the open utterance; one too short to have a single feature row is dropped."""
        if not self._utterances or self._utterances[-1].ended:
            return
        utt = self._utterances[-1]
        utt.ended = True
        if len(utt.pcm) < MIN_UTTERANCE_SAMPLES and utt.done == 0:
            self._utterances.pop()
            raise InvalidInputError(f"utterance {utt.number}: expected at least {MIN_UTTERANCE_SAMPLES} "
                                    f"samples (20 ms), found {len(utt.pcm)}; it was dropped")

    def finish(self) -> None:
        """No more speech: the queued utterances are completed, then the worker stops and iteration ends."""
        with self._lock:
            for utt in self._utterances:
                utt.ended = True
            if self._utterances and self._utterances[-1].done == 0 \
                    and len(self._utterances[-1].pcm) < MIN_UTTERANCE_SAMPLES:
                dropped = self._utterances.pop()
                log.warning("utterance %d dropped: %d samples, fewer than %d (20 ms)", dropped.number,
                            len(dropped.pcm), MIN_UTTERANCE_SAMPLES)
            self._finishing = True
            self._lock.notify_all()

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
            try:
                return self._out.get(timeout=POLL_S)
            except queue.Empty:
                pass
            if self._error is not None:
                raise self._error
            if not self._worker.is_alive() and self._out.empty():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self, *, drain: bool = False, timeout: float = 60.0) -> None:
        """Stop and release everything. `drain`: first finish the queued speech (someone must consume the
        frames, or use a callback); otherwise cancel within one chunk. After `timeout` s it cancels anyway."""
        if drain:
            self.finish()
        else:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
        if threading.current_thread() is self._worker:
            return
        deadline = time.monotonic() + timeout
        while self._worker.is_alive() and time.monotonic() < deadline:
            self._worker.join(timeout=POLL_S)
        if self._worker.is_alive():  # drain took too long: cancel
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._worker.join()
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._utterances.clear()
            self._closed = True
        if self.on_frame is not None or not self._finishing:
            self._discard_output()

    def _discard_output(self) -> None:
        try:
            while True:
                self._out.get_nowait()
        except queue.Empty:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> dict:
        """Latency figures: first-frame latency per utterance, per-chunk compute time, the floor."""
        chunks = self.chunk_seconds
        with self._lock:
            queued = self._queued_samples() / SAMPLE_RATE
        return {
            "mode": self.config.mode, "chunk_frames": self.config.render_chunk,
            "lookahead_ms": self.config.lookahead_ms, "latency_floor_s": round(self.config.latency_floor_s, 4),
            "first_frame_latency_s": [round(x, 4) for x in self.first_frame_latency_s],
            "chunks": len(chunks), "chunk_compute_s_mean": round(float(np.mean(chunks)), 4) if chunks else None,
            "chunk_compute_s_max": round(float(np.max(chunks)), 4) if chunks else None,
            "frames_emitted": self._emitted, "queued_speech_s": round(queued, 3),
            "stage_seconds": self.timer.as_dict(),
        }

    def _raise_if_unusable(self) -> None:
        if self._error is not None:
            raise EngineError(f"stream: the session failed earlier: {type(self._error).__name__}: {self._error}")
        if self._closed or self._finishing:
            raise InvalidInputError("stream: expected an open session, found it closed or finishing")

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    job = None
                    while not self._closed:
                        job = self._next_job()
                        if job is not None:
                            break
                        if self._finishing and not self._utterances:
                            return
                        self._lock.wait(timeout=self._idle_wait())
                    if self._closed:
                        return
                job()
        except BaseException as exc:  # surfaced to the consumer
            log.exception("stream worker failed")
            self._error = exc
        finally:  # the worker is the only user of the source: release it here, however it stops
            self._cursor.close()
            close_frames = getattr(self._frames, "close", None)
            if close_frames is not None:
                close_frames()

    def _idle_wait(self) -> float:
        if not self.config.realtime or self._finishing:
            return 0.5
        return min(0.5, max(IDLE_MIN_WAIT_S, self._next_due - time.time()))

    def _next_job(self):
        """Under the lock: the next unit of work, or None to wait."""
        while self._utterances and self._utterances[0].finished:
            self._utterances.popleft()
        rendering = False
        if self._utterances:
            utt = self._utterances[0]
            n = self._speech_frames_ready(utt)
            if n:
                return lambda: self._make_speech(utt)
            rendering = utt.done > 0  # mid-utterance: wait for speech rather than break its lip sync
        if self.config.realtime and not self._finishing and not rendering and self._out.empty() \
                and time.time() >= self._next_due:
            return self._make_idle
        return None

    def _speech_frames_ready(self, utt: _Utterance) -> int:
        if utt.ended:
            return self.config.render_chunk if utt.total is None else min(self.config.render_chunk,
                                                                          utt.total - utt.done)
        if self.config.mode == "utterance":
            return 0
        last = utt.done + self.config.chunk_frames - 1 - utt.trimmed_frames
        return self.config.chunk_frames if len(utt.pcm) >= samples_needed(last, self.config.lookahead_ms) else 0

    def _make_speech(self, utt: _Utterance) -> None:
        from engine.audio import audio_features, frame_windows, official_frame_count

        t0 = time.perf_counter()
        if utt.generator is None:
            utt.generator, utt.init_noise = self.core.start_noise(self.config.sync.seed)
            utt.live = LiveFeatures(self.core.audio_encoder)
        with self._lock:  # a consistent snapshot: pushes append concurrently
            samples, ended = utt.pcm.array(), utt.ended
        if ended:
            if utt.exact is None and samples.size < MIN_UTTERANCE_SAMPLES:  # live remainder after a trim
                utt.total = max(utt.done, utt.trimmed_frames + 2)
                return
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
            return
        start = utt.done - utt.trimmed_frames
        audio_embeds = frame_windows(features, start, start + n)  # [n,50,C]
        items = self._cursor.take(n)
        frames = self.core.sync_chunk(items, range(utt.done, utt.done + n), audio_embeds, self.config.sync,
                                      utt.init_noise, utt.generator, self._aligner, self.timer)
        trim_heap()
        self.chunk_seconds.append(time.perf_counter() - t0)
        for out in frames:
            if self._closed:
                return
            k = out.index
            self._emit(out.rgb, "speech", utt.number, k, out.has_face, out.source_index,
                       audio_time_s=(utt.audio_offset + k * SAMPLES_PER_FRAME) / SAMPLE_RATE,
                       final=utt.total is not None and k == utt.total - 1)
            if utt.first_frame_wall is None:
                utt.first_frame_wall = time.time()
                self.first_frame_latency_s.append(utt.first_frame_wall - utt.first_push)
        with self._lock:
            utt.done += n
            self._trim_live(utt)

    def _trim_live(self, utt: _Utterance) -> None:
        """Live and open-ended: drop a finished 30 s segment of speech (and its features) from the front."""
        if utt.ended or self.config.mode != "live":
            return
        if utt.done - utt.trimmed_frames >= SEGMENT_DONE_FRAMES and len(utt.pcm) > SEGMENT_SAMPLES:
            rest = utt.pcm.array()[SEGMENT_SAMPLES:].copy()
            utt.pcm = PcmBuffer(utt.pcm.max_samples)
            utt.pcm.append(rest)
            utt.trimmed_frames += SEGMENT_FRAMES
            utt.live = LiveFeatures(self.core.audio_encoder)

    def _make_idle(self) -> None:
        if self.config.idle == "silence":
            self._make_silence()
            return
        item = next(self._cursor)
        self._emit(item.frame, "idle", None, None, item.has_face, item.source_index)

    def _make_silence(self) -> None:
        from engine.audio import audio_features, frame_windows

        n = self.config.chunk_frames
        if self._silence_embeds is None:
            silence = np.zeros((n + 3) * SAMPLES_PER_FRAME, np.float32)
            self._silence_embeds = frame_windows(audio_features(torch.from_numpy(silence), self.core.audio_encoder),
                                                 0, n)  # [n,50,C]
        generator, noise = self.core.start_noise(self.config.sync.seed)
        frames = self.core.sync_chunk(self._cursor.take(n), range(n), self._silence_embeds, self.config.sync,
                                      noise, generator, self._aligner, self.timer)
        for out in frames:
            self._emit(out.rgb, "idle", None, None, out.has_face, out.source_index)

    def _emit(self, rgb: np.ndarray, kind: str, utterance: int | None, utterance_frame: int | None,
              has_face: bool, source_index: int, *, audio_time_s: float | None = None, final: bool = False) -> None:
        now = time.time()
        frame = StreamFrame(index=self._emitted, audio_time_s=audio_time_s, wall_time=now, rgb=rgb, kind=kind,
                            utterance=utterance, utterance_frame=utterance_frame, final=final, has_face=has_face,
                            source_index=source_index)
        self._emitted += 1
        # the timeline advances one frame; if rendering fell behind the wall clock, it restarts from now
        self._next_due = max(self._next_due + 1 / FPS, now - 1 / FPS)
        if self.on_frame is not None:
            self.on_frame(frame)
            return
        while not self._closed:
            try:
                self._out.put(frame, timeout=POLL_S)
                return
            except queue.Full:
                continue
