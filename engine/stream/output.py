"""Where a session's frames go: in order, on one 25 frames/s timeline, to a bounded queue or a callback.

The timeline's `next_due` is the wall time the next frame is due if the consumer
shows frames at 25 frames/s; it is also the deadline of the next chunk in real time.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import numpy as np

from engine.constants import FPS, SAMPLES_PER_FRAME
from engine.stream.frame import StreamFrame

POLL_S = 0.05  # how often blocked waits re-check for close()
IDLE_MIN_WAIT_S = 0.005  # idle frame due but the consumer has not taken the last one yet
IDLE_MAX_WAIT_S = 0.5
SILENT_FRAME = np.zeros(SAMPLES_PER_FRAME, np.float32)  # the audio of a frame without speech
SILENT_FRAME.flags.writeable = False


class FrameOutput:
    """Numbers the frames, keeps the timeline, and delivers each frame (blocking while the queue is full)."""

    def __init__(self, max_frames: int, on_frame: Callable[[StreamFrame], None] | None,
                 cancelled: Callable[[], bool]) -> None:
        self.on_frame = on_frame
        self._cancelled = cancelled
        self._queue: queue.Queue = queue.Queue(maxsize=max_frames)
        self.emitted = 0
        self.held = 0  # frames repeated while a chunk was being made
        self.last: StreamFrame | None = None  # the frame emitted last
        self.next_due = time.time()  # wall time the next frame of the timeline is due

    def emit(self, rgb: np.ndarray, kind: str, utterance: int | None, utterance_frame: int | None,
             has_face: bool, source_index: int, *, audio_time_s: float | None = None, final: bool = False,
             dropped: bool = False, held: bool = False, audio: np.ndarray | None = None) -> None:
        now = time.time()
        frame = StreamFrame(index=self.emitted, audio_time_s=audio_time_s, wall_time=now, rgb=rgb, kind=kind,
                            utterance=utterance, utterance_frame=utterance_frame, final=final, has_face=has_face,
                            source_index=source_index, dropped=dropped, held=held,
                            audio=SILENT_FRAME if audio is None else audio)
        self.emitted += 1
        self.held += held
        self.last = frame
        # the timeline advances one frame; if rendering fell behind the wall clock, it restarts from now
        self.next_due = max(self.next_due + 1 / FPS, now - 1 / FPS)
        if self.on_frame is not None:
            self.on_frame(frame)
            return
        while not self._cancelled():
            try:
                self._queue.put(frame, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self) -> StreamFrame | None:
        """The next queued frame within POLL_S, else None."""
        try:
            return self._queue.get(timeout=POLL_S)
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._queue.empty()

    def idle_due(self) -> bool:
        """An idle frame may go out now: the consumer took the last one and the timeline has reached it."""
        return self._queue.empty() and time.time() >= self.next_due

    def idle_wait(self, realtime: bool) -> float:
        """How long the worker may sleep before the next idle frame is due."""
        if not realtime:
            return IDLE_MAX_WAIT_S
        return min(IDLE_MAX_WAIT_S, max(IDLE_MIN_WAIT_S, self.next_due - time.time()))

    def drop_queued(self) -> int:
        """Barge-in: drop the frames the consumer has not taken yet (their indices stay skipped) and restart
        the timeline from now, so idle frames follow at once; returns how many were dropped."""
        dropped = 0
        try:
            while True:
                self._queue.get_nowait()
                dropped += 1
        except queue.Empty:
            pass
        self.next_due = min(self.next_due, time.time())
        return dropped

    def discard(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
