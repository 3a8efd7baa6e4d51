"""DDIM loop parity with the official loop (golden E, F) on the tiny U-Net, plus call-pattern checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InvalidInputError
from engine.models import LatentSyncUNet, tiny_unet_config
from engine.scheduler import denoise, denoise_batch, make_scheduler, timesteps_for

GUIDANCE = 1.5
TOL = dict(rtol=1e-4, atol=1e-3)  # golden README E


@pytest.fixture(scope="module")
def unet(golden):
    model = LatentSyncUNet.from_config(tiny_unet_config()).eval()
    model.load_state_dict(load_file(golden / "unet_tiny_weights.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def loop(golden):
    return load_file(golden / "ddim_loop.safetensors")


def _inputs(loop):
    return (loop["latents_init"], loop["mask_latents"], loop["masked_image_latents"], loop["ref_latents"],
            loop["audio_embeds"])


def test_official_schedule():
    scheduler = make_scheduler()
    assert scheduler.config.steps_offset == 1 and scheduler.config.set_alpha_to_one is False
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.timestep_spacing == "leading"
    assert timesteps_for(20) == list(range(951, 0, -50))
    assert timesteps_for(8) == [876, 751, 626, 501, 376, 251, 126, 1]
    assert timesteps_for(3) == [667, 334, 1]
    alphas = scheduler.alphas_cumprod
    assert float(alphas[951]) == pytest.approx(0.0081550, rel=1e-4)
    assert float(alphas[1]) == pytest.approx(0.998296, rel=1e-5)
    assert float(scheduler.final_alpha_cumprod) == pytest.approx(0.99915, rel=1e-6)


def test_four_steps_and_trajectory_match_golden(unet, loop):
    trajectory, seen_t = [], []

    def record(k, t, latents):
        seen_t.append(t)
        trajectory.append(latents[0].clone())

    out = denoise(unet, *_inputs(loop), steps=4, guidance_scale=GUIDANCE, callback=record)
    assert seen_t == loop["timesteps_steps4"].tolist()
    torch.testing.assert_close(torch.stack(trajectory), loop["trajectory_steps4"], **TOL)
    torch.testing.assert_close(out, loop["final_latents_steps4"], **TOL)


@pytest.mark.slow
def test_twenty_steps_match_golden(unet, loop):
    out = denoise(unet, *_inputs(loop), steps=20, guidance_scale=GUIDANCE)
    torch.testing.assert_close(out, loop["final_latents_steps20"], **TOL)


@pytest.mark.parametrize("interval,key", [
    (2, "final_latents_deepcache_i2_steps8"),
    pytest.param(None, "final_latents_nocache_steps8", marks=pytest.mark.slow),  # plain loop: the 4-step test covers it
])
def test_deepcache_eight_steps_match_golden(unet, loop, golden, interval, key):
    expected = load_file(golden / "ddim_loop_deepcache_i2.safetensors")[key]
    out = denoise(unet, *_inputs(loop), steps=8, guidance_scale=GUIDANCE, deepcache_interval=interval)
    torch.testing.assert_close(out, expected, **TOL)


class RecordingUNet:
    """Stands in for a U-Net: records every call, returns a deterministic function of its inputs."""

    def __init__(self):
        self.calls = []  # (kind, batch, timestep, audio rows)

    def _noise(self, sample, timestep, audio):
        # distinct per batch element: uncond (zero audio) and audio passes must differ
        scale = 1.0 + audio.flatten(1).abs().mean(1).view(sample.shape[0], -1).mean(1)
        return sample[:, :4] * 0.01 * scale.view(-1, 1, 1, 1, 1) + timestep.float() * 1e-4

    def _record(self, kind, sample, timestep, audio):
        assert sample.shape[1] == 13
        assert isinstance(timestep, torch.Tensor) and timestep.ndim == 0 and timestep.dtype == torch.int64
        self.calls.append((kind, sample.shape[0], int(timestep), audio.shape[0]))

    def forward(self, sample, timestep, encoder_hidden_states):
        self._record("plain", sample, timestep, encoder_hidden_states)
        return self._noise(sample, timestep, encoder_hidden_states)

    def forward_full(self, sample, timestep, encoder_hidden_states):
        self._record("full", sample, timestep, encoder_hidden_states)
        return self._noise(sample, timestep, encoder_hidden_states), torch.full((1,), float(len(self.calls)))

    def forward_shallow(self, sample, timestep, encoder_hidden_states, deep_feature):
        self._record("shallow", sample, timestep, encoder_hidden_states)
        self.calls[-1] += (float(deep_feature),)
        return self._noise(sample, timestep, encoder_hidden_states)


def _small_inputs(frames=3, size=4, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, size, size, generator=g), torch.ones(1, 1, frames, size, size),
            torch.randn(1, 4, frames, size, size, generator=g), torch.randn(1, 4, frames, size, size, generator=g),
            torch.randn(frames, 50, channels, generator=g))


def test_cfg_is_one_batched_call_with_zero_audio_first():
    fake = RecordingUNet()
    seen_audio = []
    original = fake.forward

    def spy(sample, timestep, audio):
        seen_audio.append(audio.clone())
        return original(sample, timestep, audio)

    fake.forward = spy
    inputs = _small_inputs()
    denoise(fake, *inputs, steps=5, guidance_scale=GUIDANCE)
    assert [c[:2] for c in fake.calls] == [("plain", 2)] * 5
    assert [c[2] for c in fake.calls] == timesteps_for(5)
    audio = seen_audio[0]  # [2F,50,C]: frames of the unconditional pass first
    assert torch.equal(audio[:3], torch.zeros_like(inputs[4])) and torch.equal(audio[3:], inputs[4])


@pytest.mark.parametrize("guidance", [GUIDANCE, 1.0])
def test_batched_requests_run_in_lockstep_and_each_gets_its_solo_result(guidance):
    """n requests -> one U-Net call per step with 2n rows under CFG, (uncond, audio) per request."""
    requests = [_small_inputs(seed=seed) for seed in (1, 2, 3)]
    solo = [denoise(RecordingUNet(), *r, steps=4, guidance_scale=guidance) for r in requests]
    fake, seen_audio = RecordingUNet(), []
    original = fake.forward

    def spy(sample, timestep, audio):
        seen_audio.append(audio.clone())
        return original(sample, timestep, audio)

    fake.forward = spy
    stacked = [torch.cat([r[i] for r in requests]) for i in range(4)] + [torch.stack([r[4] for r in requests])]
    batched = denoise_batch(fake, *stacked, steps=4, guidance_scale=guidance)
    rows = 6 if guidance > 1 else 3
    assert [c[:2] for c in fake.calls] == [("plain", rows)] * 4
    for k, want in enumerate(solo):
        torch.testing.assert_close(batched[k:k + 1], want, rtol=0, atol=0)
    audio = seen_audio[0].view(rows, 3, 50, 8)  # (row, frame)-major
    if guidance > 1:
        for k, r in enumerate(requests):
            assert not audio[2 * k].any() and torch.equal(audio[2 * k + 1], r[4])
    with pytest.raises(InvalidInputError, match=r"audio_embeds: expected shape \[3,3,50,C\]"):
        denoise_batch(fake, *stacked[:4], stacked[4][:2], steps=1, guidance_scale=guidance)


def test_no_cfg_at_guidance_one():
    fake = RecordingUNet()
    denoise(fake, *_small_inputs(), steps=3, guidance_scale=1.0)
    assert [c[:2] for c in fake.calls] == [("plain", 1)] * 3


def test_deepcache_schedule_and_per_call_reset():
    fake = RecordingUNet()
    denoise(fake, *_small_inputs(), steps=20, guidance_scale=GUIDANCE, deepcache_interval=3)
    kinds = [c[0] for c in fake.calls]
    assert [k for k, kind in enumerate(kinds) if kind == "full"] == [0, 3, 6, 9, 12, 15, 18]
    # each shallow step gets the feature of the latest full step (call number of that full step)
    for k, call in enumerate(fake.calls):
        if call[0] == "shallow":
            assert call[4] == float(k - k % 3 + 1)
    fake.calls.clear()
    denoise(fake, *_small_inputs(), steps=4, guidance_scale=GUIDANCE, deepcache_interval=3)
    assert [c[0] for c in fake.calls] == ["full", "shallow", "shallow", "full"]  # a new call starts full


def test_deepcache_interval_one_is_plain():
    fake = RecordingUNet()
    denoise(fake, *_small_inputs(), steps=2, guidance_scale=GUIDANCE, deepcache_interval=1)
    assert [c[0] for c in fake.calls] == ["plain", "plain"]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(index=0, value=torch.zeros(1, 4, 3, 4)), "latents"),
        (dict(index=1, value=torch.zeros(1, 1, 2, 4, 4)), "mask_latents"),
        (dict(index=3, value=torch.zeros(1, 4, 3, 4, 5)), "ref_latents"),
        (dict(index=4, value=torch.zeros(2, 50, 8)), "audio_embeds"),
    ],
)
def test_rejects_bad_shapes(change, match):
    inputs = list(_small_inputs())
    inputs[change["index"]] = change["value"]
    with pytest.raises(InvalidInputError, match=match):
        denoise(RecordingUNet(), *inputs, steps=2, guidance_scale=GUIDANCE)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=1001), dict(steps=4, deepcache_interval=0)])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(InvalidInputError):
        denoise(RecordingUNet(), *_small_inputs(), guidance_scale=GUIDANCE, **kwargs)


def test_the_most_steps_allowed_run_and_one_more_is_a_typed_error():
    from engine.errors import InvalidInputError
    from engine.scheduler import MAX_STEPS, timesteps_for

    timesteps = timesteps_for(MAX_STEPS)  # every one must index the 1000 trained timesteps
    assert len(timesteps) == MAX_STEPS and max(timesteps) <= 999 and min(timesteps) >= 0
    with pytest.raises(InvalidInputError, match=f"1..{MAX_STEPS}"):
        timesteps_for(MAX_STEPS + 1)
