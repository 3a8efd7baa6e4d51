"""Speech from voice-agent frameworks: checks at the boundary, 16 kHz passthrough, resampling, the CLI's
credentials check. No model: these run in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidInputError
from engine.integrations.speech import SpeechResampler, check_pcm


@pytest.mark.parametrize("data, rate, channels, match", [
    (np.zeros(10, np.int16).tobytes(), 16_000, 2, "mono"),
    (b"", 16_000, 1, "empty"),
    (b"\x00\x00\x00", 16_000, 1, "even byte count"),
    (np.zeros(10, np.int16).tobytes(), 0, 1, "sample rate"),
    (np.zeros(10, np.int16).tobytes(), 16_000.0, 1, "sample rate"),
    (np.zeros(10, np.float32), 16_000, 1, "int16"),
])
def test_bad_speech_is_refused_with_expected_and_found(data, rate, channels, match):
    with pytest.raises(InvalidInputError, match=match):
        check_pcm(data, rate, channels)


def test_16k_passes_through_exactly_and_other_rates_resample_across_pieces():
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(16_000) * 3000).astype(np.int16)
    resampler = SpeechResampler()
    assert np.array_equal(resampler.convert(pcm.tobytes(), 16_000), pcm.astype(np.float32) / 32768)

    t = np.arange(24_000) / 24_000
    tone = np.round(np.sin(2 * np.pi * 440 * t) * 16_000).astype(np.int16)  # 1 s at 24 kHz
    parts = [resampler.convert(piece, 24_000) for piece in np.array_split(tone, 7)] + [resampler.flush()]
    out = np.concatenate(parts)
    assert abs(out.size - 16_000) <= 64 and out.dtype == np.float32 and np.abs(out).max() <= 1.0
    whole = SpeechResampler()
    at_once = np.concatenate([whole.convert(tone, 24_000), whole.flush()])
    assert np.allclose(out, at_once, atol=1e-6)  # pieces join as if sent at once: no clicks at the seams
    rms = float(np.sqrt(np.mean(out[1000:15000] ** 2)))
    assert rms == pytest.approx(16_000 / 32768 / np.sqrt(2), rel=0.02)  # the same tone, same level
    assert resampler.flush().size == 0  # a fresh utterance after flush


def test_avatar_worker_needs_the_livekit_environment(monkeypatch, capsys):
    pytest.importorskip("livekit.agents", reason="the [livekit] extra is not installed")
    from engine.cli import main
    from engine.cli.avatar_worker import ENV_VARS, access_token

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    status = main(["avatar-worker", "--room", "demo", "--source", "avatars/none", "--model", "tiny-random"])
    assert status != 0 and "LIVEKIT_URL" in capsys.readouterr().err
    url, token = access_token("demo", "avatar", {"LIVEKIT_URL": "ws://127.0.0.1:7880", "LIVEKIT_API_KEY": "key",
                                                 "LIVEKIT_API_SECRET": "s" * 32})
    from livekit import api

    claims = api.TokenVerifier("key", "s" * 32).verify(token)
    assert url == "ws://127.0.0.1:7880" and claims.identity == "avatar" and claims.video.room == "demo"
