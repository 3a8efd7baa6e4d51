"""The streaming lip-sync session as a LiveKit Agents avatar (`[livekit]` extra).

`LatentSyncVideoGenerator` is the `VideoGenerator` that `livekit.agents.voice.avatar.AvatarRunner`
drives: the agent's speech comes in through `push_audio` (`rtc.AudioFrame`s of any rate, and an
`AudioSegmentEnd` at the end of each utterance), `clear_buffer` is the barge-in, and iterating it
yields, for every lip-synced frame, an `rtc.VideoFrame` (RGB24 at the source's size, 25 fps)
followed by that frame's own 40 ms of speech as an `rtc.AudioFrame` (16 kHz mono), and an
`AudioSegmentEnd` after an utterance's last frame (the runner then tells the agent its playback
finished). `run_avatar_worker` joins a room and runs it (`engine avatar-worker`).

Bad input (a non-mono frame, a sample rate out of range, an empty frame) is logged and dropped;
the avatar keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from engine.errors import EngineError, InvalidInputError
from engine.extras import require

require("livekit", what="the LiveKit Agents avatar (engine.integrations.livekit)")

from livekit import rtc  # noqa: E402 - after the extra check, for a typed error naming the extra
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator  # noqa: E402

from engine.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402
from engine.integrations.bridge import SessionBridge, frame_pcm16  # noqa: E402
from engine.stream.config import StreamConfig  # noqa: E402

__all__ = ["LatentSyncVideoGenerator", "run_avatar_worker"]

log = logging.getLogger(__name__)


class LatentSyncVideoGenerator(VideoGenerator):
    """Speech in, lip-synced video plus re-timed speech out, for `AvatarRunner`.

    `sync`: a loaded `LipSync`; `source`: an avatar directory, a video path or frames; `config`: the
    session's `StreamConfig` (default: live mode, real time, so idle frames keep the video going
    between utterances). Call `await start()` before the runner starts; `aclose()` releases it.
    """

    def __init__(self, sync, source, *, config: StreamConfig | None = None, face=None) -> None:
        self._bridge = SessionBridge(sync, source, config or StreamConfig(), face=face)
        self._size: tuple[int, int] | None = None  # (width, height) of the frames

    async def start(self) -> None:
        await self._bridge.start()

    @property
    def session(self):
        return self._bridge.session

    def options(self, width: int, height: int) -> AvatarOptions:
        """The runner's options for frames of `width` x `height` (the source's size)."""
        return AvatarOptions(video_width=width, video_height=height, video_fps=float(FPS),
                             audio_sample_rate=SAMPLE_RATE, audio_channels=1)

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if self._bridge.session is None:
            log.error("lip-sync avatar: audio after the generator was closed (or before start()): dropped")
            return
        if isinstance(frame, AudioSegmentEnd):
            try:
                self._bridge.end_utterance()
            except InvalidInputError as exc:  # too short to show: the segment still ends, at once
                log.error("lip-sync avatar: %s", exc)
                self._bridge.put_marker(AudioSegmentEnd())
            return
        try:
            self._bridge.push(frame.data, frame.sample_rate, frame.num_channels)
        except EngineError as exc:
            log.error("lip-sync avatar: dropped an audio frame: %s: %s", type(exc).__name__, exc)

    def clear_buffer(self) -> None:
        """Barge-in: queued speech and frames are dropped; idle frames follow within one chunk."""
        if self._bridge.session is None:
            return
        try:
            log.info("lip-sync avatar interrupted: %s", self._bridge.interrupt())
        except EngineError as exc:  # the session failed or closed meanwhile: nothing left to clear
            log.error("lip-sync avatar: clear_buffer: %s: %s", type(exc).__name__, exc)

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        while (frame := await self._bridge.next_frame()) is not None:
            if isinstance(frame, AudioSegmentEnd):
                yield frame
                continue
            height, width = frame.rgb.shape[:2]
            yield rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.rgb.tobytes())
            if frame.kind == "speech":
                yield rtc.AudioFrame(frame_pcm16(frame).tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
                if frame.final:
                    yield AudioSegmentEnd()

    async def aclose(self) -> None:
        await self._bridge.close()


async def run_avatar_worker(sync, source, *, url: str, token: str, config: StreamConfig | None = None,
                            agent_identity: str | None = None) -> None:
    """Join the room at `url` with `token` and lip-sync the agent's speech there until the room closes."""
    from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioReceiver

    from engine.integrations.bridge import source_size

    width, height = source_size(source)
    generator = LatentSyncVideoGenerator(sync, source, config=config)
    await generator.start()
    room = rtc.Room()
    try:
        await room.connect(url, token)
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=agent_identity), video_gen=generator,
                              options=generator.options(width, height))
        await runner.start()
        try:
            await runner.wait_for_complete()
        finally:
            await runner.aclose()
    finally:
        await generator.aclose()
        await room.disconnect()
