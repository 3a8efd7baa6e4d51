"""The engine core on CPU with tiny models: batched equals solo, per-job randomness, deadlines, queue bounds,
out-of-memory and non-finite faults, shutdown, the audio proxy, and bounded torch.compile graphs."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch

from engine.errors import (
    DeadlineExceededError,
    EngineError,
    GpuOutOfMemoryError,
    NonFiniteOutputError,
    QueueFullError,
)
from stream_helpers import agreement, demo1_inputs, micro_sync

FRAMES = 4  # frames per chunk in these tests (the U-Net takes any count up to 24)
CONFIG = dict(steps=3, guidance_scale=1.5, deepcache_interval=2, chunk_frames=FRAMES)  # CFG, full + shallow passes


@pytest.fixture(scope="module")
def sync():
    s = micro_sync()
    yield s
    s.close()


@pytest.fixture(scope="module")
def inputs(golden, sync):
    frames, landmarks, speech = demo1_inputs(golden, 2 * FRAMES)
    plan = sync.core.plan_audio(speech[: 640 * 2 * FRAMES])
    return frames, landmarks, plan


def make_core(sync, runners=None, **policy):
    from engine.pipeline.core import LipSyncCore
    from engine.runtime import EnginePolicy

    m = sync.models
    return LipSyncCore(unet=m.unet, vae=m.vae, audio_encoder=m.audio_encoder, resolution=m.resolution,
                       runners=runners, policy=EnginePolicy(**policy))


class Chunk:
    """One job's chunk: items aligned by its own cursor, its own generator, its audio windows."""

    def __init__(self, core, inputs, part: int, seed: int, config=None):
        from engine.pipeline.config import SyncConfig
        from engine.pipeline.faces import LandmarkArraySource
        from engine.pipeline.source import SourceCursor

        frames, landmarks, plan = inputs
        span = slice(part * FRAMES, (part + 1) * FRAMES)
        self.core, self.config = core, config or SyncConfig(seed=seed, **CONFIG)
        self.aligner = core.new_aligner()
        cursor = SourceCursor(frames[span], LandmarkArraySource(landmarks[span]), self.aligner)
        self.items = cursor.take(FRAMES)
        self.windows = plan.windows(part * FRAMES, (part + 1) * FRAMES)
        self.generator, self.noise = core.start_noise(self.config.seed)
        self.indices = range(part * FRAMES, (part + 1) * FRAMES)

    def submit(self, **kw):
        from engine.pipeline.core import StageTimer

        return self.core.submit_chunk(self.items, self.indices, self.windows, self.config, self.noise,
                                      self.generator, self.aligner, StageTimer(), **kw)


def rgb(frames) -> np.ndarray:
    return np.stack([f.rgb for f in frames])




def block_device(core) -> threading.Event:
    """Keep the device thread busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    core.engine.call_async(lambda: (started.set(), release.wait(30)))
    assert started.wait(30)
    return release


def test_batched_equals_solo_and_each_job_keeps_its_own_randomness(sync, inputs):
    solo_core = make_core(sync, max_batch=1)
    solo = [Chunk(solo_core, inputs, part, seed) for part, seed in ((0, 11), (1, 22))]
    solo_frames = [rgb(c.submit().result()) for c in solo]
    solo_core.close()

    core = make_core(sync, max_batch=2, max_wait_ms=20_000)  # the first request waits for the second
    chunks = [Chunk(core, inputs, part, seed) for part, seed in ((0, 11), (1, 22))]
    pending = [c.submit() for c in chunks]
    batched = [rgb(p.result()) for p in pending]
    assert core.engine.stats()["batch_sizes"] == {2: 1}  # one U-Net call per step for both jobs
    core.close()
    for got, want, a, b in zip(batched, solo_frames, chunks, solo):
        worst, equal = agreement(got, want)
        print(f"batched vs solo: max |diff| {worst} uint8, {100 * equal:.4f} % equal")  # measured: 0, 100 %
        assert worst <= 1 and equal >= 0.999
        assert torch.equal(a.generator.get_state(), b.generator.get_state())  # same draws, in the same order


def test_consecutive_chunks_of_one_job_batch_together_in_order(sync, inputs):
    """Single-job throughput mode: chunks 0 and 1 of one job in one batch draw from its generator in order."""

    def job(core):
        first, second = Chunk(core, inputs, 0, 7), Chunk(core, inputs, 1, 7)
        second.generator, second.noise = first.generator, first.noise  # one job: one generator, one noise frame
        pending = [c.submit(job="job") for c in (first, second)]
        return np.concatenate([rgb(p.result(timeout=120)) for p in pending]), first.generator

    solo_core = make_core(sync, max_batch=1)
    want, want_generator = job(solo_core)
    solo_core.close()
    core = make_core(sync, max_batch=2, max_wait_ms=20_000, same_job_batching=True)
    got, generator = job(core)
    assert core.engine.stats()["batch_sizes"] == {2: 1}
    core.close()
    worst, equal = agreement(got, want)
    assert worst <= 1 and equal >= 0.999, (worst, equal)
    assert torch.equal(generator.get_state(), want_generator.get_state())


def test_expired_request_is_dropped_before_device_work(sync, inputs):
    from engine.backends.base import Runners

    calls = []
    runners = sync.core.runners
    counting = Runners(unet=_Faulty(runners.unet, lambda rows: calls.append(rows) and False), vae=runners.vae,
                       audio_encoder=runners.audio_encoder, choice=runners.choice)
    core = make_core(sync, runners=counting)
    release = block_device(core)
    late = Chunk(core, inputs, 0, 1).submit(deadline=time.monotonic() + 0.01)
    time.sleep(0.1)
    release.set()
    with pytest.raises(DeadlineExceededError, match="dropped without device work"):
        late.result(timeout=60)
    assert calls == [] and core.engine.stats()["expired_requests"] == 1
    core.close()


def test_full_queue_refuses_at_once_and_cancel_frees_the_slots(sync, inputs):
    core = make_core(sync, max_batch=1, max_queued_chunks=2)
    release = block_device(core)
    first, second = Chunk(core, inputs, 0, 1), Chunk(core, inputs, 1, 2)
    queued = [first.submit(job="a"), second.submit(job="a")]
    t0 = time.monotonic()
    with pytest.raises(QueueFullError, match="expected fewer than 2 chunks waiting"):
        Chunk(core, inputs, 0, 3).submit(job="b")
    assert time.monotonic() - t0 < 1.0  # at once, not after a wait
    assert core.engine.cancel_job("a") == 2 and all(p.future.cancelled() for p in queued)
    third = Chunk(core, inputs, 0, 3).submit(job="b")  # room again
    release.set()
    assert len(third.result(timeout=120)) == FRAMES
    core.close()


class _Faulty:
    """A U-Net runner that raises what `fault(rows)` returns (an exception class) before calling the real one."""

    def __init__(self, real, fault):
        self.real, self.fault = real, fault

    def _check(self, sample):
        error = self.fault(sample.shape[0])
        if error:
            raise error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def forward(self, sample, t, ehs):
        self._check(sample)
        return self.real.forward(sample, t, ehs)

    def forward_full(self, sample, t, ehs):
        self._check(sample)
        return self.real.forward_full(sample, t, ehs)

    def forward_shallow(self, sample, t, ehs, deep):
        self._check(sample)
        return self.real.forward_shallow(sample, t, ehs, deep)


def _faulty_core(sync, fault, **policy):
    """Batches of two when two requests arrive within 2 s (the tests submit pairs back to back)."""
    from engine.backends.base import Runners

    r = sync.core.runners
    runners = Runners(unet=_Faulty(r.unet, fault), vae=r.vae, audio_encoder=r.audio_encoder, choice=r.choice)
    return make_core(sync, runners=runners, **{"max_batch": 2, "max_wait_ms": 2000, **policy})


def test_out_of_memory_fails_only_its_batch_and_the_engine_keeps_serving(sync, inputs):
    oom = torch.cuda.OutOfMemoryError
    core = _faulty_core(sync, lambda rows: oom if rows > 2 else None, oom_retry=False)  # two CFG requests fail
    pair = [Chunk(core, inputs, part, seed).submit() for part, seed in ((0, 1), (1, 2))]
    for pending in pair:
        with pytest.raises(GpuOutOfMemoryError, match="out of memory .*keeps serving"):
            pending.result(timeout=120)
    alone = Chunk(core, inputs, 0, 1).submit()  # waits for company, then runs alone: fits
    assert len(alone.result(timeout=120)) == FRAMES and core.engine.stats()["oom_events"] == 1
    core.close()


def test_out_of_memory_retries_in_halves_with_the_same_draws(sync, inputs):
    reference = make_core(sync, max_batch=1)
    want = [rgb(Chunk(reference, inputs, part, seed).submit().result()) for part, seed in ((0, 1), (1, 2))]
    reference.close()
    oom = torch.cuda.OutOfMemoryError
    core = _faulty_core(sync, lambda rows: oom if rows > 2 else None)  # oom_retry on (the default)
    pair = [Chunk(core, inputs, part, seed).submit() for part, seed in ((0, 1), (1, 2))]
    got = [rgb(p.result(timeout=120)) for p in pair]
    stats = core.engine.stats()
    assert stats["oom_events"] == 1 and stats["batch_sizes"] == {1: 2}
    for a, b in zip(got, want):
        worst, equal = agreement(a, b)
        assert worst <= 1 and equal >= 0.999  # generators were rewound before the retry
    core.close()


def test_any_batch_failure_goes_to_its_requests_not_the_device_thread(sync, inputs):
    core = _faulty_core(sync, lambda rows: RuntimeError if rows == 2 else None, max_wait_ms=0)
    failing = Chunk(core, inputs, 0, 1).submit()
    with pytest.raises(RuntimeError, match="injected"):
        failing.result(timeout=120)
    ok = Chunk(core, inputs, 0, 1, config=_no_cfg()).submit()  # 1 row per step: works
    assert len(ok.result(timeout=120)) == FRAMES
    core.close()


def _no_cfg():
    from engine.pipeline.config import SyncConfig

    return SyncConfig(seed=1, **{**CONFIG, "guidance_scale": 1.0})


class _NanVae:
    """The real VAE runner, except that decoding in a low precision gives NaN (an fp16 overflow stand-in)."""

    def __init__(self, real):
        self.real = real

    def posterior(self, pixels):
        return self.real.posterior(pixels)

    def decode_latents(self, latents):
        images = self.real.decode_latents(latents)
        return images if latents.dtype == torch.float32 else torch.full_like(images, float("nan"))


def _nan_core(sync, fp32_decoder):
    from engine.backends.base import Runners
    from engine.pipeline.core import LipSyncCore

    r, m = sync.core.runners, sync.models
    runners = Runners(unet=r.unet, vae=_NanVae(r.vae), audio_encoder=r.audio_encoder, choice=r.choice)
    core = LipSyncCore(unet=m.unet, vae=m.vae, audio_encoder=m.audio_encoder, resolution=m.resolution,
                       dtype=torch.bfloat16, runners=runners)
    if fp32_decoder is not None:
        core.engine._loop._fp32_factory = fp32_decoder
    return core


def test_non_finite_decode_is_retried_in_fp32_for_that_chunk(sync, inputs, caplog):
    core = _nan_core(sync, None)  # the default factory: a float32 copy of the real VAE
    with caplog.at_level(logging.WARNING, logger="engine.runtime.device_step"):
        frames = Chunk(core, inputs, 1, 5, config=_no_cfg()).submit().result(timeout=120)
    retries = [r for r in caplog.records if "retrying this chunk in float32" in r.getMessage()]
    assert len(retries) == 1 and "chunk frames 4..7" in retries[0].getMessage()
    assert len(frames) == FRAMES and all(f.has_face for f in frames)
    core.close()


def test_still_non_finite_after_fp32_is_a_typed_error_naming_the_frames(sync, inputs):
    core = _nan_core(sync, lambda: (lambda z: torch.full((z.shape[0], 3, 256, 256), float("nan"))))
    with pytest.raises(NonFiniteOutputError, match=r"chunk frames 4\.\.7: .*again in float32"):
        Chunk(core, inputs, 1, 5, config=_no_cfg()).submit().result(timeout=120)
    ok = Chunk(core, inputs, 0, 5, config=_no_cfg()).submit()
    with pytest.raises(NonFiniteOutputError):  # the fault is in the injected VAE, the engine still serves
        ok.result(timeout=120)
    assert core.engine.stats()["failed_requests"] == 2
    core.close()


def test_close_fails_queued_work_joins_the_thread_and_refuses_more(sync, inputs):
    core = make_core(sync)
    release = block_device(core)
    queued = Chunk(core, inputs, 0, 1).submit()
    closer = threading.Thread(target=core.close)
    closer.start()
    release.set()
    closer.join(60)
    assert not closer.is_alive()
    with pytest.raises(EngineError, match="closed"):
        queued.result(timeout=10)
    with pytest.raises(EngineError, match="closed"):
        Chunk(core, inputs, 0, 1).submit()
    assert not any(t.name == "lipsync-device" and t.is_alive() and t is core.engine._loop.thread
                   for t in threading.enumerate())


def test_audio_encoder_proxy_is_safe_from_many_threads(sync):
    from engine.audio import audio_features

    speech = (0.1 * np.sin(np.arange(16000) / 7)).astype(np.float32)
    want = audio_features(speech, sync.models.audio_encoder)  # the module itself, in this thread
    results = [None] * 3

    def encode(k):
        results[k] = audio_features(speech, sync.core.audio_encoder)

    threads = [threading.Thread(target=encode, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, want) for r in results)
    with pytest.raises(Exception, match="position_offset"):
        sync.core.audio_encoder(torch.zeros(1, 80, 3000), position_offset=5)


def test_warm_up_runs_each_shape_once_and_sets_ready(sync):
    from engine.pipeline.config import SyncConfig

    core = make_core(sync, max_batch=2)
    assert not core.engine.ready
    configs = [SyncConfig(steps=1, guidance_scale=1.0, deepcache_interval=None, chunk_frames=2),
               SyncConfig(steps=3, guidance_scale=1.5, deepcache_interval=2, chunk_frames=2)]
    report = core.warm_up(configs, batch_sizes=[1, 2], tails=[1])
    assert core.engine.ready
    assert [(s["frames"], s["batch"], s["cfg"]) for s in report["shapes"]] == [
        (2, 1, False), (2, 2, False), (1, 1, False), (2, 1, True), (2, 2, True), (1, 1, True)]
    assert core.engine.stats()["batch_sizes"] == {1: 4, 2: 2}  # batch-2 shapes really ran as one batch
    core.close()


class _TinyDecoderVae(torch.nn.Module):
    """The smallest module with the VAE decoder's call shape (for counting compilations)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)

    def decode(self, latents, return_dict=False):
        return (self.conv(latents),)


class _TinyUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(13, 4, 1)

    def forward_full(self, sample, timestep, ehs):
        noise = self.conv(sample) + timestep.view(-1, 1, 1, 1, 1) + ehs.mean()
        return noise, noise.repeat(1, 80, 1, 1, 1)


def test_compile_count_is_bounded_whatever_the_tail_lengths():
    from engine.backends.torch_backend import CompileExecutor

    compiled = []

    def counting(gm, example_inputs):
        compiled.append([tuple(t.shape) for t in example_inputs])
        return gm.forward

    torch._dynamo.reset()
    unet = _TinyUNet()
    executor = CompileExecutor("unet", unet, compiler=counting, chunk_frames=16, max_graphs=4)
    for frames in [16, *range(1, 16), 16]:  # full chunk, every tail length, full chunk again
        for batch in (1, 2):
            feeds = {"sample": torch.randn(batch, 13, frames, 4, 4), "timestep": torch.full((batch,), 5.0),
                     "encoder_hidden_states": torch.randn(batch * frames, 50, 8)}
            out = executor(feeds)
            want = executor.module(*feeds.values())
            assert torch.allclose(out["noise_pred"], want[0])
    assert len(compiled) == 2 and executor.compiled_shapes and len(executor.eager_shapes) == 30  # (B=1, B=2) x 16 f

    vae = CompileExecutor("vae_decoder", _TinyDecoderVae(), compiler=counting, chunk_frames=16, max_graphs=2)
    compiled.clear()
    for rows in (16, 32, 48, 64, 5, 16):  # two full shapes compile, the rest run eagerly
        vae({"latents": torch.randn(rows, 4, 4, 4)})
    assert len(compiled) == 2 and len(vae.eager_shapes) == 3
    torch._dynamo.reset()


@pytest.mark.requires_cuda
def test_cuda_batches_match_solo_and_the_face_path_stays_on_the_device(golden):
    from engine.pipeline.core import LipSyncCore
    from engine.runtime import EnginePolicy
    from engine.weights import load_models

    models = load_models("tiny-random", device="cuda", dtype=torch.float16)

    def core(**policy):
        return LipSyncCore(unet=models.unet, vae=models.vae, audio_encoder=models.audio_encoder,
                           resolution=models.resolution, device="cuda", dtype=torch.float16,
                           policy=EnginePolicy(**policy))

    solo, batched = core(max_batch=1), core(max_batch=2, max_wait_ms=20_000)
    frames, landmarks, speech = demo1_inputs(golden, 2 * FRAMES)
    inputs = (frames, landmarks, solo.plan_audio(speech[: 640 * 2 * FRAMES]))
    want = [rgb(Chunk(solo, inputs, part, seed).submit().result(timeout=300)) for part, seed in ((0, 1), (1, 2))]
    chunks = [Chunk(batched, inputs, part, seed) for part, seed in ((0, 1), (1, 2))]
    assert all(item.frame_tensor is not None and item.frame_tensor.is_cuda for item in chunks[0].items)  # uploaded once
    got = [rgb(p.result(timeout=300)) for p in [c.submit() for c in chunks]]
    assert batched.engine.stats()["batch_sizes"] == {2: 1}
    for a, b in zip(got, want):
        worst, equal = agreement(a, b)
        assert worst <= 2 and equal >= 0.99, (worst, equal)  # fp16 batched kernels: looser than CPU fp32
    solo.close()
    batched.close()
