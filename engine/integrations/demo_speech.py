"""Where the browser demo's speech comes from, without an LLM or a TTS: a speech file read in a loop, or an echo
of what the microphone said (`[webrtc]` extra, used by `engine demo`).

Both stages sit before `LatentSyncVideoService` and speak the way a TTS service does (`TTSStartedFrame`,
`TTSAudioRawFrame`s, `TTSStoppedFrame`); a `PlaybackMonitor` after the service counts the speech frames that
come out, so a stage starts its next utterance only once the last one has been shown (on a slow device the
speech would otherwise pile up faster than it can be lip-synced).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from engine.extras import require

require("pipecat", what="the browser demo's speech stages (engine.integrations.demo_speech)")

from pipecat.frames.frames import (  # noqa: E402 - after the extra check, for a typed error naming the extra
    Frame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402
from engine.media.audio import to_pcm16  # noqa: E402

__all__ = ["EchoSpeech", "PlaybackMonitor", "SpeechFileLoop"]

log = logging.getLogger(__name__)
PIECE_SAMPLES = SAMPLE_RATE // 5  # speech goes out in 200 ms pieces, as a TTS streams it
PLAYBACK_TIMEOUT_S = 600.0  # a session that stopped making frames does not block the stage for ever


class PlaybackMonitor(FrameProcessor):
    """Counts the re-timed speech frames (`TTSAudioRawFrame`, one per video frame) the video service sends on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.speech_frames = 0
        self._changed = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            async with self._changed:
                self.speech_frames += 1
                self._changed.notify_all()
        await self.push_frame(frame, direction)

    async def wait_for(self, count: int, timeout: float = PLAYBACK_TIMEOUT_S) -> bool:
        """Wait until `count` speech frames have passed in all; False on timeout."""
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.speech_frames >= count)

        try:
            await asyncio.wait_for(reached(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class _Speaker(FrameProcessor):
    """Speaks int16 16 kHz utterances downstream as a TTS service would, one at a time."""

    def __init__(self, monitor: PlaybackMonitor, *, stats: Callable[[], dict | None] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.monitor = monitor
        self.stats = stats  # the lip-sync session's `stats` (None before it starts), for the log
        self.utterances = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)  # every frame passes (EchoSpeech keeps the microphone's)

    async def speak(self, pcm: np.ndarray) -> None:
        """Push one utterance (int16 [n] at 16 kHz) and wait until its frames have come out of the service and its
        speech has had time to play (frames of chunks dropped for their deadline come out at once)."""
        target = self.monitor.speech_frames + pcm.size // SAMPLES_PER_FRAME
        played_at = asyncio.get_running_loop().time() + pcm.size / SAMPLE_RATE
        log.info("demo: utterance %d, %.2f s of speech, sent at %.3f (unix time)", self.utterances + 1,
                 pcm.size / SAMPLE_RATE, time.time())
        await self.push_frame(TTSStartedFrame())
        for start in range(0, pcm.size, PIECE_SAMPLES):
            piece = pcm[start:start + PIECE_SAMPLES]
            await self.push_frame(TTSAudioRawFrame(audio=piece.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1))
        await self.push_frame(TTSStoppedFrame())
        self.utterances += 1
        if await self.monitor.wait_for(target):
            stats = self.stats() if self.stats else None
            latency = stats["first_frame_latency_s"][-1] if stats and stats["first_frame_latency_s"] else None
            log.info("demo: utterance %d shown, its first frame made %s s after its speech", self.utterances,
                     "?" if latency is None else f"{latency:.3f}")
        else:
            log.warning("demo: utterance %d not shown after %.0f s", self.utterances, PLAYBACK_TIMEOUT_S)
        await asyncio.sleep(max(0.0, played_at - asyncio.get_running_loop().time()))


class SpeechFileLoop(_Speaker):
    """Reads one utterance (int16 [n] at 16 kHz, e.g. `engine.media.audio.load_pcm16(path)`) again and again once
    `start()` is called (the browser connected), `pause_s` apart."""

    def __init__(self, speech: np.ndarray, monitor: PlaybackMonitor, *, pause_s: float = 1.0, **kwargs) -> None:
        super().__init__(monitor, **kwargs)
        self.speech, self.pause_s = speech, pause_s
        self._loop: asyncio.Task | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = self.create_task(self._read_aloud(), name="demo-speech-loop")

    async def _read_aloud(self) -> None:
        while True:
            await self.speak(self.speech)
            await asyncio.sleep(self.pause_s)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._loop is not None:
            await self.cancel_task(self._loop)
            self._loop = None


class EchoSpeech(_Speaker):
    """Speaks back what the microphone said: an energy gate over `InputAudioRawFrame`s finds an utterance (voice
    louder than `threshold_dbfs` for `min_speech_s`, ended by `silence_s` of quiet), which then goes out at 16 kHz.
    Microphone audio is not passed on; while an echo is being shown, the microphone is ignored."""

    def __init__(self, monitor: PlaybackMonitor, *, threshold_dbfs: float = -40.0, min_speech_s: float = 0.3,
                 silence_s: float = 0.7, max_speech_s: float = 15.0, **kwargs) -> None:
        super().__init__(monitor, **kwargs)
        self.threshold = 32768.0 * 10 ** (threshold_dbfs / 20)  # RMS of int16 samples
        self.min_speech_s, self.silence_s, self.max_speech_s = min_speech_s, silence_s, max_speech_s
        self._pieces: list[np.ndarray] = []  # int16 [k] at 16 kHz, from the first loud piece on
        self._voiced_s = self._quiet_s = 0.0
        self._echo: asyncio.Task | None = None
        self._resampler = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if not isinstance(frame, InputAudioRawFrame):
            await super().process_frame(frame, direction)
            return
        await FrameProcessor.process_frame(self, frame, direction)
        if self._echo is None or self._echo.done():
            self._listen(frame)

    def _listen(self, frame: InputAudioRawFrame) -> None:
        pcm = self._mono16k(frame)
        if pcm.size == 0:
            return
        seconds = pcm.size / SAMPLE_RATE
        loud = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) >= self.threshold
        if not self._pieces and not loud:
            return
        self._pieces.append(pcm)
        if loud:
            self._voiced_s += seconds
            self._quiet_s = 0.0
        else:
            self._quiet_s += seconds
        heard = sum(p.size for p in self._pieces) / SAMPLE_RATE
        if self._quiet_s >= self.silence_s or heard >= self.max_speech_s:
            pieces, voiced = self._pieces, self._voiced_s
            self._pieces, self._voiced_s, self._quiet_s = [], 0.0, 0.0
            if voiced >= self.min_speech_s:
                self._echo = self.create_task(self.speak(np.concatenate(pieces)), name="demo-echo")

    def _mono16k(self, frame: InputAudioRawFrame) -> np.ndarray:
        """The frame's samples as int16 mono at 16 kHz (the transport's input rate is usually 16 kHz already)."""
        pcm = np.frombuffer(frame.audio, np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate != SAMPLE_RATE:
            from engine.integrations.speech import SpeechResampler

            self._resampler = self._resampler or SpeechResampler()
            pcm = to_pcm16(self._resampler.convert(pcm, frame.sample_rate))
        return pcm

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._echo is not None:
            await self.cancel_task(self._echo)
            self._echo = None
