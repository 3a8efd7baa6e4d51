"""The LiveKit Agents avatar's VideoGenerator, driven as AvatarRunner drives it (no LiveKit server here).

Speech goes in through livekit-agents' own `QueueAudioOutput` (the agent side's audio output, read
as an `AudioReceiver`, the way the runner reads it) and `rtc.AudioFrame`s; what comes out is
checked as the runner would forward it: `rtc.VideoFrame`s at the source's size, each followed by
its own speech, `AudioSegmentEnd` after an utterance's last frame, `clear_buffer` honoured.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="the [livekit] extra is not installed")

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402
from stream_helpers import fast_settings, micro_sync, still_inputs  # noqa: E402

SHORT = 4_800  # 0.3 s -> 8 frames


@pytest.fixture(scope="module")
def sync():
    return micro_sync()


@pytest.fixture(scope="module")
def still(golden):
    frames, landmarks, audio = still_inputs(golden)
    from engine.media.audio import to_pcm16

    return frames, landmarks, to_pcm16(audio)


def _generator(sync, still, **kw):
    from engine.integrations.livekit import LatentSyncVideoGenerator
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig

    kw.setdefault("realtime", False)
    return LatentSyncVideoGenerator(sync, still[0], config=StreamConfig(sync=fast_settings(), **kw),
                                    face=LandmarkArraySource(still[1]))


def _audio_frame(pcm: np.ndarray, rate: int, channels: int = 1):
    from livekit import rtc

    return rtc.AudioFrame(pcm.tobytes(), rate, channels, pcm.size // channels)


async def _feed(queue, generator):
    """What AvatarRunner._read_audio does: every frame the agent's audio output sends, into the generator."""
    async for frame in queue:
        await generator.push_audio(frame)


async def _until_segment_end(frames, out):
    from livekit.agents.voice.avatar import AudioSegmentEnd

    async for item in frames:
        out.append(item)
        if isinstance(item, AudioSegmentEnd):
            return out


def test_generator_frames_audio_and_segment_end_equal_the_stream_session(sync, still):
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, QueueAudioOutput

    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    speech = still[2][:SHORT]
    reference = StreamSession(sync, still[0], StreamConfig(sync=fast_settings(), mode="utterance", realtime=False),
                              face=LandmarkArraySource(still[1]))
    reference.push_audio(speech, end_of_speech=True)
    reference.finish()
    want = list(reference.frames(timeout=300))
    reference.close()

    async def main():
        generator = _generator(sync, still, mode="utterance")
        await generator.start()
        queue = QueueAudioOutput(sample_rate=SAMPLE_RATE)
        feeder = asyncio.create_task(_feed(queue, generator))
        for piece in np.array_split(speech, 3):
            await queue.capture_frame(_audio_frame(piece, SAMPLE_RATE))
        queue.flush()  # the agent's utterance ended: AudioSegmentEnd
        out = await asyncio.wait_for(_until_segment_end(generator.__aiter__(), []), 300)
        feeder.cancel()
        await generator.aclose()
        return out

    out = asyncio.run(main())
    assert isinstance(out[-1], AudioSegmentEnd) and len(out) == 2 * 8 + 1
    video, audio = out[0:-1:2], out[1:-1:2]
    assert all(isinstance(v, rtc.VideoFrame) and isinstance(a, rtc.AudioFrame) for v, a in zip(video, audio))
    height, width = still[0].shape[1:3]
    for v, frame in zip(video, want):
        assert (v.width, v.height, v.type) == (width, height, rtc.VideoBufferType.RGB24)
        assert np.array_equal(np.frombuffer(v.data, np.uint8).reshape(height, width, 3), frame.rgb)
    assert all((a.sample_rate, a.num_channels, a.samples_per_channel) == (SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
               for a in audio)
    played = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio])
    assert np.array_equal(played[:SHORT], speech) and not played[SHORT:].any()
    assert sum(a.duration for a in audio) == pytest.approx(8 / 25)  # audio as long as the video


def test_clear_buffer_bad_input_and_the_next_utterance(sync, still, caplog):
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, QueueAudioOutput

    speech = still[2]
    long24k = np.repeat(np.tile(speech, 2), 3)[::2]  # 2.6 s at 24 kHz: about 64 frames
    second = speech[:SHORT]

    async def main():
        generator = _generator(sync, still, mode="live", chunk_frames=8, lookahead_ms=0)
        await generator.start()
        queue = QueueAudioOutput(sample_rate=24_000)
        queue.on("clear_buffer", generator.clear_buffer)  # what AvatarRunner does on the agent's interruption
        feeder = asyncio.create_task(_feed(queue, generator))
        frames = generator.__aiter__()
        for piece in np.array_split(long24k, 4):
            await queue.capture_frame(_audio_frame(piece, 24_000))
        before = []
        while not before or not isinstance(before[-1], rtc.VideoFrame):
            before.append(await asyncio.wait_for(frames.__anext__(), 300))
        queue.clear_buffer()  # barge-in
        await asyncio.sleep(0)
        queue.flush()
        await generator.push_audio(_audio_frame(np.repeat(second, 2), SAMPLE_RATE, channels=2))  # not mono
        await generator.push_audio(_audio_frame(second, 4_000))  # sample rate out of range
        await generator.push_audio(_audio_frame(second[:160], SAMPLE_RATE))  # 10 ms: too short to show
        await generator.push_audio(AudioSegmentEnd())  # ... its segment still ends (the agent is not left waiting)
        early = await asyncio.wait_for(_until_segment_end(frames, []), 300)
        for piece in np.array_split(second, 2):
            await generator.push_audio(_audio_frame(piece, SAMPLE_RATE))
        await generator.push_audio(AudioSegmentEnd())
        after = await asyncio.wait_for(_until_segment_end(frames, []), 300)
        feeder.cancel()
        await generator.aclose()  # the client went away: iteration ends, nothing left running
        rest = [item async for item in frames]
        return early + after, rest, generator

    after, rest, generator = asyncio.run(main())
    assert sum(isinstance(f, AudioSegmentEnd) for f in after) == 2
    assert rest == [] and generator.session is None
    video = [f for f in after if isinstance(f, rtc.VideoFrame)]
    audio = [f for f in after if isinstance(f, rtc.AudioFrame)]
    # the first item may be the speech of the frame shown just before the barge-in (a frame keeps its audio)
    assert len(audio) == len(video) + isinstance(after[0], rtc.AudioFrame)
    assert len(video) <= 8 + 1 + 8  # stale frames: at most about one chunk, then the 8 of the next utterance
    played = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio[-8:]])
    assert np.array_equal(played[:SHORT], second) and not played[SHORT:].any()
    logged = caplog.text
    assert "mono" in logged and "sample rate" in logged and "20 ms" in logged  # logged; the avatar kept going
