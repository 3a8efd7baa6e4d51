"""A `StreamSession` driven from an asyncio event loop: speech pieces in, frames out on an asyncio queue.

The session's worker thread delivers each frame through its callback into the loop; a barge-in
(`interrupt`) also drops the frames of the interrupted utterances that were already on their way.
Both integrations (Pipecat, LiveKit) sit on this, so they add no image processing of their own:
their frames are the session's frames.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from engine.constants import SAMPLE_RATE
from engine.errors import InvalidInputError
from engine.media.audio import to_pcm16
from engine.integrations.speech import SpeechResampler
from engine.stream.config import StreamConfig
from engine.stream.frame import StreamFrame

log = logging.getLogger(__name__)
POLL_S = 0.02
_END = object()  # end of the frames: the session has finished


def open_source(source):
    """An avatar directory -> `Avatar`; anything else (a video path, frames) goes to the session as it is."""
    from engine.stream.avatar import Avatar

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return Avatar(source)
    return source


def source_size(source) -> tuple[int, int]:
    """(width, height) of the frames a session over `source` shows (the source's own size)."""
    from engine.stream.avatar import Avatar

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        source = Avatar(source)
    if isinstance(source, Avatar):
        return source.manifest.width, source.manifest.height
    if isinstance(source, (str, Path)):
        from engine.media import probe

        video = probe(source, require_video=True).video
        return video.width, video.height
    frames = np.asarray(source)
    return int(frames.shape[-2]), int(frames.shape[-3])


class SessionBridge:
    """One `StreamSession` for one agent conversation; every method runs on the event loop's thread."""

    def __init__(self, sync, source, config: StreamConfig, *, face=None) -> None:
        self.sync, self.source, self.config, self.face = sync, source, config, face
        self.session = None
        self.frames: asyncio.Queue | None = None
        self.resampler = SpeechResampler()
        self.in_utterance = False  # speech pushed since the last utterance end
        self._first_live_utterance = 0  # speech frames of lower utterance numbers were interrupted
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open the session (the source is opened and checked here, off the event loop)."""
        from engine.stream.session import StreamSession

        self._loop = asyncio.get_running_loop()
        self.frames = asyncio.Queue()
        source = open_source(self.source)
        self.session = await asyncio.to_thread(StreamSession, self.sync, source, self.config,
                                               on_frame=self._deliver, face=self.face)

    def _deliver(self, frame: StreamFrame) -> None:  # on the session's worker thread
        self._loop.call_soon_threadsafe(self.frames.put_nowait, frame)

    def push(self, data, sample_rate: int, num_channels: int = 1) -> int:
        """One piece of int16 speech at any rate; returns the 16 kHz samples queued. InvalidInputError on bad
        input (nothing is queued then: the utterance goes on with the next good piece)."""
        pcm = self.resampler.convert(data, sample_rate, num_channels)
        if pcm.size:
            self.session.push_audio(pcm, sample_rate=SAMPLE_RATE)
            self.in_utterance = True
        return int(pcm.size)

    def end_utterance(self) -> None:
        """The utterance's speech is complete: its last frames are made from the exact features."""
        rest = self.resampler.flush()
        if rest.size:
            self.session.push_audio(rest)
            self.in_utterance = True
        if self.in_utterance:
            self.in_utterance = False
            self.session.end_of_speech()

    def interrupt(self) -> dict:
        """Barge-in: drop queued speech, chunks and frames (see `StreamSession.interrupt`)."""
        self.resampler.reset()
        self.in_utterance = False
        dropped = self.session.interrupt()
        self._first_live_utterance = dropped["next_utterance"]
        while not self.frames.empty():  # frames already delivered but not taken
            frame = self.frames.get_nowait()
            if frame is _END or not self._stale(frame):
                self.frames.put_nowait(frame)
                break
            dropped["frames"] += 1
        return dropped

    def _stale(self, frame) -> bool:
        return (isinstance(frame, StreamFrame) and frame.kind == "speech"
                and frame.utterance < self._first_live_utterance)

    async def next_frame(self) -> StreamFrame | None:
        """The next frame to show (interrupted utterances' frames skipped), or a marker an integration queued
        itself (`put_marker`); None once the session finished."""
        while True:
            frame = await self.frames.get()
            if frame is _END:
                self.frames.put_nowait(_END)  # every later call sees the end too
                return None
            if not self._stale(frame):
                return frame

    def put_marker(self, marker) -> None:
        """Queue `marker` after the frames delivered so far (e.g. the end of an utterance that had no frames)."""
        self.frames.put_nowait(marker)

    async def finish(self) -> None:
        """Complete the utterance in flight and the queued speech, then end the frames (`next_frame` -> None)."""
        try:
            self.end_utterance()
        except InvalidInputError as exc:  # a last utterance too short to show: nothing to finish
            log.warning("lip-sync: %s", exc)
        self.session.finish()
        while self.session.worker_alive:
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(0)  # the worker's last call_soon_threadsafe deliveries run before the end marker
        self.frames.put_nowait(_END)

    async def close(self) -> None:
        """Stop at once (cancel within one chunk) and release the session."""
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.to_thread(session.close)
        if self.frames is not None:
            self.frames.put_nowait(_END)


def frame_pcm16(frame: StreamFrame) -> np.ndarray:
    """The frame's speech as int16 [640] at 16 kHz (what both frameworks play); int16 speech comes back exact."""
    return to_pcm16(frame.audio)
