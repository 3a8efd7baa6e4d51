"""The official DDIM denoising loop: CFG with zero audio, optional DeepCache, one U-Net call per step."""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import torch
from torch import Tensor

from engine.errors import InvalidInputError

# configs/scheduler_config.json of the official repo, plus the diffusers defaults it relies on (spec §1.9).
OFFICIAL_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "thresholding": False,
    "rescale_betas_zero_snr": False,
}
# "leading" spacing with steps_offset 1 puts the first timestep at (steps - 1) * (1000 // steps) + 1, which is 1000
# (one past the last trained timestep) for 1000 steps: the official loop fails there too, so 999 is the most.
MAX_STEPS = OFFICIAL_SCHEDULER_CONFIG["num_train_timesteps"] - OFFICIAL_SCHEDULER_CONFIG["steps_offset"]

StepCallback = Callable[[int, int, Tensor], None]  # (step index k, timestep t, latents after step k)


class DenoisingUNet(Protocol):
    """What `denoise` needs from a U-Net (LatentSyncUNet or a backend wrapper)."""

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor: ...

    def forward_full(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> tuple[Tensor, Tensor]: ...

    def forward_shallow(
        self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, deep_feature: Tensor
    ) -> Tensor: ...


def make_scheduler():
    """A fresh diffusers DDIMScheduler with the official configuration (no timesteps set)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**OFFICIAL_SCHEDULER_CONFIG)


@functools.lru_cache(maxsize=32)
def _scheduler_for(steps: int):
    """A DDIMScheduler with `set_timesteps(steps)` done, shared by every call with that step count.

    `DDIMScheduler.step` only reads its state, so sharing one object per step count is safe across
    chunks and threads as long as nobody calls `set_timesteps` on it again.
    """
    scheduler = make_scheduler()
    scheduler.set_timesteps(steps)
    return scheduler


def timesteps_for(steps: int) -> list[int]:
    """The official timesteps for `steps` DDIM steps, e.g. 20 -> [951, 901, ..., 51, 1]."""
    _check_steps(steps)
    return [int(t) for t in _scheduler_for(steps).timesteps]


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or not (1 <= steps <= MAX_STEPS):
        raise InvalidInputError(f"steps: expected an integer in 1..{MAX_STEPS}, found {steps!r}")


def _check_inputs(latents, mask_latents, masked_image_latents, ref_latents, audio_embeds) -> None:
    """Shapes of a batch of n requests: latents [n,4,F,h,w], conditioning alike, audio [n,F,50,C]."""
    if latents.ndim != 5 or latents.shape[1] != 4 or latents.shape[0] < 1:
        raise InvalidInputError(f"latents: expected shape [n,4,F,h,w], found {list(latents.shape)}")
    n, _, frames, h, w = latents.shape
    for name, tensor, channels in (
        ("mask_latents", mask_latents, 1),
        ("masked_image_latents", masked_image_latents, 4),
        ("ref_latents", ref_latents, 4),
    ):
        want = [n, channels, frames, h, w]
        if list(tensor.shape) != want:
            raise InvalidInputError(f"{name}: expected shape {want}, found {list(tensor.shape)}")
    if audio_embeds.ndim != 4 or tuple(audio_embeds.shape[:2]) != (n, frames):
        raise InvalidInputError(
            f"audio_embeds: expected shape [{n},{frames},50,C] (one window per frame), found {list(audio_embeds.shape)}"
        )


@torch.no_grad()
def denoise(
    unet: DenoisingUNet,
    latents: Tensor,  # [1,4,F,h,w] initial noise
    mask_latents: Tensor,  # [1,1,F,h,w]
    masked_image_latents: Tensor,  # [1,4,F,h,w]
    ref_latents: Tensor,  # [1,4,F,h,w]
    audio_embeds: Tensor,  # [F,50,C]
    *,
    steps: int,
    guidance_scale: float,
    deepcache_interval: int | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
) -> Tensor:  # [1,4,F,h,w] final latents
    """Run the official DDIM loop for one chunk and return the denoised latents (see `denoise_batch`)."""
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise InvalidInputError(f"latents: expected shape [1,4,F,h,w], found {list(latents.shape)}")
    if audio_embeds.ndim != 3 or audio_embeds.shape[0] != latents.shape[2]:
        raise InvalidInputError(
            f"audio_embeds: expected shape [{latents.shape[2]},50,C] (one window per frame), "
            f"found {list(audio_embeds.shape)}"
        )
    return denoise_batch(unet, latents, mask_latents, masked_image_latents, ref_latents, audio_embeds[None],
                         steps=steps, guidance_scale=guidance_scale, deepcache_interval=deepcache_interval, eta=eta,
                         callback=callback)


@torch.no_grad()
def denoise_batch(
    unet: DenoisingUNet,
    latents: Tensor,  # [n,4,F,h,w] initial noise, one row per request
    mask_latents: Tensor,  # [n,1,F,h,w]
    masked_image_latents: Tensor,  # [n,4,F,h,w]
    ref_latents: Tensor,  # [n,4,F,h,w]
    audio_embeds: Tensor,  # [n,F,50,C]
    *,
    steps: int,
    guidance_scale: float,
    deepcache_interval: int | None = None,
    eta: float = 0.0,
    generators: list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> Tensor:  # [n,4,F,h,w] final latents
    """Run the official DDIM loop for n independent chunks in lockstep, one U-Net call per step.

    CFG (guidance_scale > 1) gives every request two rows, unconditional (all-zero audio) first:
    U-Net batch B = 2n with rows (u_0, a_0, u_1, a_1, ...), and noise_i = u_i + g * (a_i - u_i). With
    `deepcache_interval` = N > 1, step k is a full pass (storing each row's deep feature) when k % N == 0
    and a shallow pass otherwise; the cache lives only inside this call. Rows never mix (the U-Net's
    GroupNorm statistics are per sample over frames), so each request gets what it gets alone, up to
    floating-point noise of batched kernels. eta > 0 draws DDIM noise per request from `generators`
    (global RNG when None). Arithmetic runs in the dtype of `latents`.
    """
    _check_steps(steps)
    _check_inputs(latents, mask_latents, masked_image_latents, ref_latents, audio_embeds)
    if deepcache_interval is not None and deepcache_interval < 1:
        raise InvalidInputError(f"deepcache_interval: expected None or >= 1, found {deepcache_interval}")
    n = latents.shape[0]
    if generators is not None and len(generators) != n:
        raise InvalidInputError(f"generators: expected one per request ({n}), found {len(generators)}")
    scheduler = _scheduler_for(steps)
    use_cfg = guidance_scale > 1.0
    use_cache = deepcache_interval is not None and deepcache_interval > 1
    rows = 2 if use_cfg else 1  # U-Net rows per request

    # U-Net input [B,13,F,h,w] = [noisy 4 | mask 1 | masked image 4 | reference 4], B = rows * n (both rows of
    # a request get the same latents). The conditioning channels are written once; each step refills 0..3.
    model_in = torch.empty((n, rows, 13, *latents.shape[2:]), dtype=latents.dtype, device=latents.device)
    model_in[:, :, 4:5] = mask_latents[:, None]
    model_in[:, :, 5:9] = masked_image_latents[:, None]
    model_in[:, :, 9:13] = ref_latents[:, None]
    model_in = model_in.flatten(0, 1)  # [B,13,F,h,w], request-major
    if use_cfg:
        audio_embeds = torch.stack([torch.zeros_like(audio_embeds), audio_embeds], dim=1)  # [n,2,F,50,C]
    audio_embeds = audio_embeds.reshape(-1, *audio_embeds.shape[-2:])  # [B*F,50,C], (row, frame)-major
    audio_embeds = audio_embeds.to(device=latents.device, dtype=latents.dtype)

    deep_feature: Tensor | None = None
    for k, t in enumerate(scheduler.timesteps):
        t_int = int(t)
        timestep = torch.tensor(t_int, dtype=torch.int64, device=latents.device)  # 0-d
        model_in.unflatten(0, (n, rows))[:, :, :4] = latents[:, None]
        if not use_cache:
            noise = unet.forward(model_in, timestep, audio_embeds)
        elif k % deepcache_interval == 0:
            noise, deep_feature = unet.forward_full(model_in, timestep, audio_embeds)
        else:
            noise = unet.forward_shallow(model_in, timestep, audio_embeds, deep_feature)
        if use_cfg:
            pairs = noise.unflatten(0, (n, 2))  # [n,2,4,F,h,w]
            noise_uncond, noise_audio = pairs[:, 0], pairs[:, 1]
            noise = noise_uncond + guidance_scale * (noise_audio - noise_uncond)
        variance = None
        if eta > 0 and generators is not None:
            variance = torch.cat([torch.randn(latents.shape[1:], generator=g, device=g.device, dtype=latents.dtype)
                                  .to(latents.device)[None] for g in generators])
        latents = scheduler.step(noise, t_int, latents, eta=eta, variance_noise=variance, return_dict=False)[0]
        if callback is not None:
            callback(k, t_int, latents)
    return latents
