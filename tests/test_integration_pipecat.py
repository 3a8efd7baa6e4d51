"""The Pipecat video service in real Pipecat pipelines (in-process, no network, tiny-random model).

Checks: all frames of an utterance come out before the EndFrame (`run_test`), equal to a
`StreamSession`'s; each image is followed by its own 40 ms of speech; barge-in stops the talking
frames within one chunk; bad input is a non-fatal typed error and the pipeline goes on; other
frames pass through untouched.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="the [pipecat] extra is not installed")

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME  # noqa: E402
from engine.errors import InvalidInputError  # noqa: E402
from stream_helpers import fast_settings, micro_sync, still_inputs  # noqa: E402

SHORT = 4_800  # 0.3 s of speech -> 8 frames


@pytest.fixture(scope="module")
def sync():
    return micro_sync()


@pytest.fixture(scope="module")
def still(golden):
    """A still avatar (one demo1 frame repeated) with its landmarks, and demo1's speech as int16."""
    frames, landmarks, audio = still_inputs(golden)
    from engine.media.audio import to_pcm16

    return frames, landmarks, to_pcm16(audio)


def _faces(still):
    from engine.pipeline.faces import LandmarkArraySource

    return LandmarkArraySource(still[1])


def _config(**kw):
    from engine.stream import StreamConfig

    kw.setdefault("realtime", False)
    return StreamConfig(sync=fast_settings(), **kw)


def _service(sync, still, **kw):
    from engine.integrations.pipecat import LatentSyncVideoService

    return LatentSyncVideoService(sync=sync, source=still[0], config=_config(**kw), face=_faces(still))


def _kinds(frames):
    from pipecat.frames.frames import OutputImageRawFrame, TTSAudioRawFrame

    images = [f for f in frames if isinstance(f, OutputImageRawFrame)]
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    return images, audio


def test_run_test_sees_every_frame_of_an_utterance_equal_to_the_stream_session(sync, still):
    from pipecat.frames.frames import (OutputImageRawFrame, TextFrame, TTSAudioRawFrame, TTSStartedFrame,
                                       TTSStoppedFrame)
    from pipecat.tests.utils import run_test

    from engine.stream import StreamSession

    speech = still[2][:SHORT]
    reference = StreamSession(sync, still[0], _config(mode="utterance"), face=_faces(still))
    reference.push_audio(speech, end_of_speech=True)
    reference.finish()
    want = list(reference.frames(timeout=300))
    reference.close()
    assert len(want) == SHORT // SAMPLES_PER_FRAME + 1 == 8

    text = TextFrame("unrelated")
    pieces = [TTSAudioRawFrame(audio=p.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1)
              for p in np.array_split(speech, 3)]
    down, up = asyncio.run(run_test(_service(sync, still, mode="utterance"),
                                    frames_to_send=[TTSStartedFrame(), *pieces, TTSStoppedFrame(), text]))
    assert text in down and not up  # passed through untouched, no error
    images, audio = _kinds(down)
    assert len(images) == len(audio) == 8  # all of them, before the EndFrame
    body = [f for f in down if isinstance(f, (OutputImageRawFrame, TTSAudioRawFrame))]
    assert all(isinstance(f, OutputImageRawFrame if k % 2 == 0 else TTSAudioRawFrame) for k, f in enumerate(body))
    height, width = still[0].shape[1:3]
    for image, frame in zip(images, want):
        assert image.size == (width, height) and image.format == "RGB"
        assert np.array_equal(np.frombuffer(image.image, np.uint8).reshape(height, width, 3), frame.rgb)
    assert all(a.sample_rate == SAMPLE_RATE and a.num_channels == 1 and a.num_frames == SAMPLES_PER_FRAME
               for a in audio)
    played = np.concatenate([np.frombuffer(a.audio, np.int16) for a in audio])
    assert np.array_equal(played[:SHORT], speech) and not played[SHORT:].any()


def test_pipeline_interruption_bad_input_and_a_clean_next_utterance(sync, still):
    from pipecat.frames.frames import (EndFrame, ErrorFrame, InterruptionFrame, OutputImageRawFrame,
                                       TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame)
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import WorkerRunner
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class Collect(FrameProcessor):
        def __init__(self, direction):
            super().__init__()
            self.direction, self.frames = direction, []

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if direction == self.direction:
                self.frames.append(frame)
            await self.push_frame(frame, direction)

    first, last = Collect(FrameDirection.UPSTREAM), Collect(FrameDirection.DOWNSTREAM)
    service = _service(sync, still, mode="live", chunk_frames=8, lookahead_ms=0)
    worker = PipelineWorker(Pipeline([first, service, last]), cancel_on_idle_timeout=False)
    speech = still[2]
    long24k = np.repeat(np.tile(speech, 2), 3)[::2]  # 2.6 s at 24 kHz: about 64 frames
    second = speech[:SHORT]

    async def talk():
        while service.session is None:  # the pipeline has started
            await asyncio.sleep(0.05)
        await worker.queue_frames([TTSStartedFrame(), *[
            TTSAudioRawFrame(audio=p.tobytes(), sample_rate=24_000, num_channels=1)
            for p in np.array_split(long24k, 4)]])
        while not any(isinstance(f, OutputImageRawFrame) for f in last.frames):
            await asyncio.sleep(0.02)
        seen = len(_kinds(last.frames)[0])
        await worker.queue_frames([
            InterruptionFrame(), TTSStoppedFrame(),
            TTSAudioRawFrame(audio=second.tobytes(), sample_rate=SAMPLE_RATE, num_channels=2),  # not mono
            TTSAudioRawFrame(audio=b"", sample_rate=SAMPLE_RATE, num_channels=1),  # empty
            TTSAudioRawFrame(audio=second.tobytes(), sample_rate=0, num_channels=1),  # no sample rate
            TTSStartedFrame(), TTSAudioRawFrame(audio=second.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1),
            TTSStoppedFrame(), EndFrame()])
        return seen

    async def main():
        runner = WorkerRunner()
        await runner.add_workers(worker)
        return (await asyncio.gather(runner.run(), asyncio.wait_for(talk(), 300)))[1]

    seen = asyncio.run(main())
    assert isinstance(last.frames[-1], EndFrame)  # the pipeline kept running to a normal end
    errors = [f for f in first.frames if isinstance(f, ErrorFrame)]
    assert len(errors) == 3 and all(isinstance(e.exception, InvalidInputError) and not e.fatal for e in errors)
    assert "mono" in errors[0].error and "empty" in errors[1].error and "sample rate" in errors[2].error
    images, audio = _kinds(last.frames)
    assert len(images) == len(audio)
    assert len(images) - 8 <= seen + 8 + 1  # the interrupted utterance stopped within one chunk (8 frames)
    played = np.concatenate([np.frombuffer(a.audio, np.int16) for a in audio[-8:]])
    assert np.array_equal(played[:SHORT], second) and not played[SHORT:].any()  # the next utterance, whole
