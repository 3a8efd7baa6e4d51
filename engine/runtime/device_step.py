"""One batch of chunk requests on the device: VAE encode, per-job sampling, DDIM in lockstep, decode, paste.

Runs only on the engine core's device thread. Every request keeps its own randomness: the VAE
computes posterior means/stds for the whole batch, then each request draws its masked-image sample
and its reference sample from its own generator, in that (official) order, so a job's frames do
not depend on what it was batched with, up to the floating-point noise of batched kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from engine.errors import EngineError, NonFiniteOutputError
from engine.runtime.requests import ChunkWork, Posterior
from engine.runtime.timing import StageClock

log = logging.getLogger(__name__)

Decoder = Callable[[Tensor], Tensor]  # scaled latents [f,4,h,w] -> images [f,3,R,R]


def run_batch(runners, works: list[ChunkWork], clock: StageClock, *, max_vae_rows: int | None = None,
              fp32_decoder: Callable[[], Decoder | None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[Tensor | NonFiniteOutputError]:
    """Pasted faces [f,3,R,R] (run dtype, not clamped) per request, or that request's error.

    All `works` share one ShapeClass. `fp32_decoder()` gives a float32 VAE decoder for chunks whose
    decode is not finite in a lower precision (None: no retry possible). `should_stop()` is asked after every
    denoising step: true (every job of the batch was cancelled) raises ChunkCancelled, so a cancelled job
    stops within one U-Net step instead of one chunk.
    """
    from engine.face.mask import mask_to_latent
    from engine.models.vae import posterior_sample
    from engine.scheduler import denoise_batch

    shape = works[0].shape
    dtype, f = shape.dtype, shape.frames
    with clock.stage("vae_encode"):
        samples = []
        for work, (mm, ms, rm, rs) in zip(works, _posteriors(runners.vae, works, dtype, max_vae_rows)):
            masked = posterior_sample(mm, ms, generator=work.generator)  # [f,4,h,w], the job's next draw
            ref = posterior_sample(rm, rs, generator=work.generator)  # then its reference draw
            samples.append((masked, ref))

    def clip(x: Tensor) -> Tensor:  # [f,c,h,w] -> [c,f,h,w]
        return x.permute(1, 0, 2, 3)

    latents = torch.stack([w.init_noise[0].to(dtype).expand(-1, f, -1, -1) for w in works])  # [n,4,f,h,w]
    mask_latents = torch.stack([clip(mask_to_latent(w.masks).to(dtype)) for w in works])  # [n,1,f,h,w]
    masked_latents = torch.stack([clip(m) for m, _ in samples])  # [n,4,f,h,w]
    ref_latents = torch.stack([clip(r) for _, r in samples])
    audio = torch.stack([w.audio.to(latents.device, dtype) for w in works])  # [n,f,50,C]
    with clock.stage("unet"):
        latents = denoise_batch(
            runners.unet, latents, mask_latents, masked_latents, ref_latents, audio, steps=shape.steps,
            guidance_scale=shape.guidance_scale, deepcache_interval=shape.deepcache_interval, eta=shape.eta,
            generators=[w.generator for w in works] if shape.eta > 0 else None,
            callback=_stop_check(should_stop),
        )
    with clock.stage("vae_decode"):
        per_request = list(latents.permute(0, 2, 1, 3, 4))  # n x [f,4,h,w]
        decoded = _rows(runners.vae.decode_latents, torch.cat(per_request), max_vae_rows).split(f)
        finite = torch.isfinite(torch.stack(decoded).flatten(1)).all(dim=1).tolist()  # one sync per batch
        out: list[Tensor | NonFiniteOutputError] = []
        for work, images, z, ok in zip(works, decoded, per_request, finite):
            if not ok:
                images = _retry_in_fp32(work, z, fp32_decoder)
                if isinstance(images, NonFiniteOutputError):
                    out.append(images)
                    continue
            m = work.masks.to(images.dtype)
            out.append(images * (1 - m) + work.pixel.to(images.dtype) * m)  # official paste in pixel space
    return out


class ChunkCancelled(EngineError):
    """Every job of a batch was cancelled while it ran; the batch stopped between denoising steps."""


def _stop_check(should_stop: Callable[[], bool] | None):
    if should_stop is None:
        return None

    def check(step: int, timestep: int, latents: Tensor) -> None:
        if should_stop():
            raise ChunkCancelled(f"chunk: cancelled after denoising step {step + 1}")

    return check


def _posteriors(vae, works: list[ChunkWork], dtype: torch.dtype, max_rows: int | None) -> list[Posterior]:
    """(masked mean, masked std, ref mean, ref std) per request; one VAE call for every request that needs it."""
    need = [w for w in works if w.posterior is None]
    encoded: dict[int, Posterior] = {}
    if need:
        pixels = torch.cat([w.masked for w in need] + [w.pixel for w in need]).to(dtype)  # [2*sum f,3,R,R]
        means, stds = zip(*(vae.posterior(part) for part in _split(pixels, max_rows)))
        sizes = [w.frames for w in need] * 2
        mean, std = torch.cat(means).split(sizes), torch.cat(stds).split(sizes)
        k = len(need)
        for i, w in enumerate(need):
            encoded[id(w)] = (mean[i], std[i], mean[k + i], std[k + i])
    return [encoded[id(w)] if w.posterior is None else tuple(t.to(dtype) for t in w.posterior) for w in works]


def _split(rows: Tensor, max_rows: int | None) -> list[Tensor]:
    return [rows] if max_rows is None or rows.shape[0] <= max_rows else list(rows.split(max_rows))


def _rows(fn: Callable[[Tensor], Tensor], rows: Tensor, max_rows: int | None) -> Tensor:
    return torch.cat([fn(part) for part in _split(rows, max_rows)])


def _retry_in_fp32(work: ChunkWork, latents: Tensor, fp32_decoder) -> Tensor | NonFiniteOutputError:
    """Decode one chunk again in float32 (the SD VAE can overflow in fp16); a typed error if still not finite."""
    first, stop = work.frame_range
    where = f"chunk frames {first}..{stop - 1}"
    if not torch.isfinite(latents).all():
        return NonFiniteOutputError(f"{where}: expected finite U-Net latents, found NaN/Inf (in {work.dtype}); "
                                    "no frames were made from them")
    decoder = fp32_decoder() if fp32_decoder is not None and work.dtype != torch.float32 else None
    if decoder is None:
        return NonFiniteOutputError(f"{where}: expected finite VAE decoder output, found NaN/Inf in {work.dtype} "
                                    "and no float32 retry is possible")
    log.warning("%s: VAE decode not finite in %s; retrying this chunk in float32", where, work.dtype)
    images = decoder(latents.float())
    if not torch.isfinite(images).all():
        return NonFiniteOutputError(f"{where}: expected finite VAE decoder output, found NaN/Inf in {work.dtype} "
                                    "and again in float32")
    return images
