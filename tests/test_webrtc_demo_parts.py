"""`engine demo`'s parts that need no browser and no model: the missing-extra error, checks before any model loads,
the scaled source, and the echo stage in a real Pipecat pipeline (`run_test`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.cli import main


def test_without_the_extra_engine_demo_names_it(monkeypatch, capsys):
    from engine import extras

    real = extras.missing_modules
    monkeypatch.setattr(extras, "missing_modules", lambda name: ["aiortc"] if name == "webrtc" else real(name))
    assert main(["demo"]) == extras.MissingExtraError.exit_code == 7
    err = capsys.readouterr().err
    assert "MissingExtraError" in err and '[webrtc]' in err and "aiortc" in err


def test_bad_source_and_speech_fail_before_the_model_loads(tmp_path, capsys):
    pytest.importorskip("aiortc", reason="the [webrtc] extra is not installed")
    assert main(["demo", "--source", str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "no-model")]) == 2
    assert "demo --source" in capsys.readouterr().err
    (tmp_path / "speech.wav").write_bytes(b"not audio")
    code = main(["demo", "--speech", str(tmp_path / "speech.wav"), "--model", str(tmp_path / "no-model")])
    assert code != 0 and "no-model" not in capsys.readouterr().err  # the speech file is refused first


def test_a_tall_source_is_scaled_to_max_height(tmp_path):
    import av

    from engine.cli.demo import demo_source

    clip = tmp_path / "tall.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (3, 400, 200, 3), np.uint8)
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 200, 400, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    source, size = demo_source(str(clip), 100, "auto")
    assert size == (50, 100) and source.shape == (3, 100, 50, 3) and source.dtype == np.uint8
    assert demo_source(str(clip), 0, "auto") == (str(clip), (200, 400))  # 0: the source as it is
    assert demo_source(str(clip), 400, "auto") == (str(clip), (200, 400))


def test_the_echo_stage_speaks_back_an_utterance_once_the_user_stops():
    pytest.importorskip("pipecat", reason="the [pipecat] extra is not installed")
    from pipecat.frames.frames import InputAudioRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.tests.utils import run_test

    from engine.integrations.demo_speech import EchoSpeech, PlaybackMonitor

    rate, piece = 16_000, 320  # 20 ms microphone pieces
    t = np.arange(rate // 2) / rate
    voice = np.round(8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)  # 0.5 s, about -12 dBFS
    quiet = np.zeros(rate, np.int16)  # 1 s
    mic = np.concatenate([quiet[:3200], voice, quiet])
    frames = [InputAudioRawFrame(audio=mic[k:k + piece].tobytes(), sample_rate=rate, num_channels=1)
              for k in range(0, mic.size, piece)]
    down, _ = asyncio.run(run_test(EchoSpeech(PlaybackMonitor()), frames_to_send=frames, send_end_frame=True))
    assert not [f for f in down if isinstance(f, InputAudioRawFrame)]  # the microphone is not passed on
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame))]
    assert kinds[0] is TTSStartedFrame and kinds[-1] is TTSStoppedFrame and kinds.count(TTSStartedFrame) == 1
    spoken = np.concatenate([np.frombuffer(f.audio, np.int16) for f in down if isinstance(f, TTSAudioRawFrame)])
    start = spoken.tobytes().find(voice[:64].tobytes()) // 2
    assert start >= 0 and np.array_equal(spoken[start:start + voice.size], voice)  # the voice, unchanged
    assert spoken.size < voice.size + 0.9 * rate  # ended by the silence, not by the end of the input
