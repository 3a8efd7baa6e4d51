"""`LatentSyncVideoService`: the streaming lip-sync session as a Pipecat video service (`[pipecat]` extra).

In the style of Pipecat's own video services (Simli, Tavus, HeyGen): it takes the TTS audio
(`TTSAudioRawFrame`, any rate), treats `TTSStartedFrame` / `TTSStoppedFrame` as utterance bounds,
and pushes downstream, for every frame of the lip-synced video, a raw RGB `OutputImageRawFrame`
at the source's size followed by that frame's 40 ms of speech as a `TTSAudioRawFrame` (16 kHz
mono): the audio is re-timed to the video, so the transport plays them in lock-step. An
`InterruptionFrame` or `UserStartedSpeakingFrame` (barge-in) drops the queued speech and frames
within one chunk. Every other frame passes through untouched. On `EndFrame` the utterance in
flight is finished (all its frames pushed) before the `EndFrame` goes on.

    from engine.integrations.pipecat import LatentSyncVideoService
    video = LatentSyncVideoService(sync=LipSync("latentsync-1.5", device="cuda"), source="avatars/anna")
    pipeline = Pipeline([transport.input(), stt, llm, tts, video, transport.output()])

Bad input (a non-mono stream, a sample rate out of range, empty audio) is logged and reported
upstream as a non-fatal `ErrorFrame` carrying the typed error; the pipeline keeps running.
"""

from __future__ import annotations

import asyncio
import logging

from engine.errors import EngineError
from engine.extras import require

require("pipecat", what="the Pipecat video service (engine.integrations.pipecat)")

from pipecat.frames.frames import (  # noqa: E402 - after the extra check, for a typed error naming the extra
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

from engine.constants import FPS, SAMPLE_RATE  # noqa: E402
from engine.integrations.bridge import SessionBridge, frame_pcm16  # noqa: E402
from engine.stream.config import StreamConfig  # noqa: E402

__all__ = ["LatentSyncVideoService", "stream_config"]

log = logging.getLogger(__name__)
FRAME_RATE = FPS  # the video's frames per second (set the transport's video_out_framerate to it)


def stream_config(*, preset: str = "reference", steps: int | None = None, guidance: float | None = None,
                  mode: str = "live", chunk_frames: int = 16, lookahead_ms: float = 240.0,
                  realtime: bool = True) -> StreamConfig:
    """The session settings both integrations take as keywords (see `StreamConfig`)."""
    from engine.pipeline.config import resolve_config

    return StreamConfig(mode=mode, chunk_frames=chunk_frames, lookahead_ms=lookahead_ms, realtime=realtime,
                        sync=resolve_config(preset, steps=steps, guidance_scale=guidance))


class LatentSyncVideoService(FrameProcessor):
    """TTS audio in, lip-synced raw RGB video plus re-timed audio out, on the user's own device.

    `sync`: a loaded `engine.pipeline.LipSync`; `source`: an avatar directory (`engine avatar prepare`),
    a video path, or frames. Keywords: `preset`, `steps`, `guidance`, `mode` ("live" starts chunks
    before the TTS finishes, "utterance" waits for TTSStoppedFrame), `chunk_frames` (8/12/16),
    `lookahead_ms`, `realtime` (idle frames at 25 fps between utterances; late chunks dropped),
    or a whole `config: StreamConfig`; `face`: a face source for a video (default: the model's).
    """

    def __init__(self, sync, source, *, config: StreamConfig | None = None, preset: str = "reference",
                 steps: int | None = None, guidance: float | None = None, mode: str = "live",
                 chunk_frames: int = 16, lookahead_ms: float = 240.0, realtime: bool = True, face=None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        config = config or stream_config(preset=preset, steps=steps, guidance=guidance, mode=mode,
                                         chunk_frames=chunk_frames, lookahead_ms=lookahead_ms, realtime=realtime)
        self._bridge = SessionBridge(sync, source, config, face=face)
        self._pusher: asyncio.Task | None = None

    @property
    def session(self):
        """The underlying `StreamSession` (None before the pipeline starts)."""
        return self._bridge.session

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            try:
                await self._bridge.start()
            except EngineError as exc:  # a source or model that cannot serve: nothing can be lip-synced
                log.error("lip-sync: cannot start: %s: %s", type(exc).__name__, exc)
                await self.push_error(f"lip-sync: cannot start: {exc}", exception=exc, fatal=True)
                return
            self._pusher = self.create_task(self._push_video(), name="latentsync-video")
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame):
            if self._bridge.session is not None:
                self._guard(self._bridge.push, frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, TTSStartedFrame):
            self._guard(self._bridge.end_utterance)  # audio without a TTSStoppedFrame before: its own utterance
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            self._guard(self._bridge.end_utterance)
            await self.push_frame(frame, direction)
        elif isinstance(frame, (InterruptionFrame, UserStartedSpeakingFrame)):
            if self._bridge.session is not None:
                self._guard(lambda: log.info("lip-sync interrupted: %s", self._bridge.interrupt()))
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._close()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _guard(self, call, *args) -> None:
        """Run a session call; a typed error is logged and reported upstream, and the pipeline goes on."""
        try:
            call(*args)
        except EngineError as exc:
            log.error("lip-sync: %s: %s", type(exc).__name__, exc)
            self.create_task(self.push_error(f"lip-sync: {exc}", exception=exc), name="latentsync-error")

    async def _push_video(self) -> None:
        """Every session frame downstream: the image, then (speech frames) its own 40 ms of speech."""
        while (frame := await self._bridge.next_frame()) is not None:
            height, width = frame.rgb.shape[:2]
            image = OutputImageRawFrame(image=frame.rgb.tobytes(), size=(width, height), format="RGB")
            if frame.kind == "speech":
                image.sync_with_audio = True  # shown once the speech before it has been played
            await self.push_frame(image)
            if frame.kind == "speech":
                await self.push_frame(TTSAudioRawFrame(audio=frame_pcm16(frame).tobytes(), sample_rate=SAMPLE_RATE,
                                                       num_channels=1))

    async def _finish(self) -> None:
        if self._bridge.session is None:
            return
        await self._bridge.finish()
        if self._pusher is not None:
            await self._pusher
            self._pusher = None
        await self._bridge.close()

    async def _close(self) -> None:
        await self._bridge.close()
        if self._pusher is not None:
            await self.cancel_task(self._pusher)
            self._pusher = None

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()
