"""The chunked lip-sync core: frames and speech in, finished frames out, one chunk at a time.

Everything else (offline files, the SDK, streaming sessions) drives this core.
It never holds the whole video: source frames are decoded lazily, and only the
frames a ping-pong pass will revisit are kept (spilled to a temporary file
beyond a small RAM budget).

Faithful by default to the official `LipsyncPipeline.__call__` (spec §1.3):
L = floor(N/2) + 2 output frames from N whisper features; ping-pong loop of the
source when L > T; one initial noise frame shared by all frames of all chunks;
chunks of 16 starting at frame 16·i; per chunk the VAE posterior sample of the
masked faces, then of the reference faces, from one seeded generator; DDIM with
zero-audio CFG; paste in pixel space with the mouth mask; restore into the frame.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.constants import SAMPLES_PER_FRAME
from engine.errors import InvalidInputError
from engine.pipeline.config import SyncConfig
from engine.pipeline.heap import trim_heap
from engine.pipeline.source import SourceCursor, SourceItem

log = logging.getLogger(__name__)


@dataclass
class OutputFrame:
    """One finished frame, in output order."""

    index: int  # output frame index (25 fps timeline of the audio)
    source_index: int  # the input frame it was made from (ping-pong aware)
    rgb: np.ndarray  # [H,W,3] uint8
    has_face: bool


@dataclass
class StageTimer:
    """Wall time per named stage, summed over a run."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def measure(self, stage: str) -> "_Span":
        return _Span(self.seconds, stage)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.seconds.items()}


class _Span:
    def __init__(self, sink: dict[str, float], stage: str) -> None:
        self.sink, self.stage = sink, stage

    def __enter__(self) -> None:
        _sync_cuda()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        _sync_cuda()  # asynchronous GPU work is charged to the stage that queued it
        self.sink[self.stage] += time.perf_counter() - self.t0


def _sync_cuda() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class FaceLandmarkSource:
    """What the core needs from face finding: three alignment points per source frame, or None."""

    def landmarks(self, source_index: int, rgb: np.ndarray) -> np.ndarray | None:  # [3,2] float32
        raise NotImplementedError


@dataclass
class AudioPlan:
    """Whisper features of the whole speech and the frame count they imply."""

    features: torch.Tensor  # [N,5,C]
    num_frames: int  # L = N//2 + 2 (official)
    samples: np.ndarray  # float32 [S] at 16 kHz

    @property
    def trimmed_audio(self) -> np.ndarray:
        """Audio muxed with the output: the first 640·L samples (official trim; shorter audio stays shorter)."""
        return self.samples[: self.num_frames * SAMPLES_PER_FRAME]

    def windows(self, start: int, stop: int) -> torch.Tensor:
        """Per-frame audio windows [stop-start, 50, C] for output frames start..stop-1."""
        from engine.audio import frame_windows

        return frame_windows(self.features, start, stop)


class LipSyncCore:
    """Runs the official chunked denoising over a stream of frames.

    `unet` may be a `LatentSyncUNet` or any backend runner with the same
    forward/forward_full/forward_shallow interface.
    """

    def __init__(self, *, unet, vae, audio_encoder, resolution: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.unet = unet
        self.vae = vae
        self.audio_encoder = audio_encoder
        self.resolution = int(resolution)
        self.device = torch.device(device)
        self.dtype = dtype
        self.latent_size = self.resolution // 8

    def new_aligner(self):
        from engine.face.align import FaceAligner

        return FaceAligner(self.resolution)

    # ------------------------------------------------------------------ audio
    def plan_audio(self, samples: np.ndarray) -> AudioPlan:
        """Whisper features for the whole clip (the official path is whole-clip: global max, 30 s windows)."""
        from engine.audio import audio_features, official_frame_count

        samples = np.asarray(samples)
        if samples.ndim != 1 or samples.dtype != np.float32:
            raise InvalidInputError(
                f"audio: expected float32 mono samples [S], found {samples.dtype} {tuple(samples.shape)}"
            )
        if samples.size < 2 * 160:
            raise InvalidInputError(f"audio: expected at least 320 samples (20 ms at 16 kHz), found {samples.size}")
        if not np.isfinite(samples).all():
            raise InvalidInputError("audio: expected finite samples, found NaN or Inf")
        with torch.inference_mode():
            features = audio_features(torch.from_numpy(samples), self.audio_encoder)
        return AudioPlan(features=features, num_frames=official_frame_count(features.shape[0]), samples=samples)

    # ------------------------------------------------------------------ noise
    def start_noise(self, seed: int) -> tuple[torch.Generator, torch.Tensor]:
        """The run's generator and its first draw: one noise frame [1,4,1,h,w] shared by every frame."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        h = w = self.latent_size
        noise = torch.randn((1, 4, 1, h, w), generator=generator, device=self.device, dtype=self.dtype)
        return generator, noise

    # ------------------------------------------------------------------ offline
    def run(
        self,
        frames: Iterable,
        audio: AudioPlan,
        faces: FaceLandmarkSource,
        config: SyncConfig,
        *,
        num_source_estimate: int | None = None,
        exact_source_count: bool = False,
        timer: StageTimer | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
        strict_faces: bool = False,
    ) -> Iterator[OutputFrame]:
        """Yield the L output frames in order, chunk by chunk.

        `strict_faces`: once a frame without a face is seen, stop generating and only
        scan the remaining frames (the caller raises with the complete ranges).
        """
        timer = timer or StageTimer()
        aligner = self.new_aligner()
        cursor = SourceCursor(frames, faces, aligner, num_output=audio.num_frames,
                              num_source_estimate=num_source_estimate, exact_count=exact_source_count, timer=timer)
        generator, init_noise = self.start_noise(config.seed)
        scan_only = False
        try:
            for start in range(0, audio.num_frames, config.chunk_frames):
                stop = min(start + config.chunk_frames, audio.num_frames)
                items = cursor.take(stop - start)
                scan_only = scan_only or (strict_faces and not all(item.has_face for item in items))
                if scan_only:
                    yield from (OutputFrame(j, item.source_index, item.frame, item.has_face)
                                for j, item in zip(range(start, stop), items))
                    continue
                yield from self.sync_chunk(items, range(start, stop), audio.windows(start, stop), config,
                                           init_noise, generator, aligner, timer)
                trim_heap()  # per-chunk temporaries would otherwise pile up in glibc's arenas
                if on_chunk is not None:
                    on_chunk(start, stop)
        finally:
            cursor.close()

    # ------------------------------------------------------------------ one chunk
    def sync_chunk(self, items: list[SourceItem], indices: Iterable[int], audio_embeds: torch.Tensor,
                   config: SyncConfig, init_noise: torch.Tensor, generator: torch.Generator, aligner,
                   timer: StageTimer) -> list[OutputFrame]:
        """Generate the mouths of one chunk; frames without a face pass through unchanged.

        `audio_embeds` [f,50,C] holds one window per item. Frames with a face are
        denoised together (their count sets the chunk's GroupNorm statistics, as
        in the official pipeline when every frame has a face).
        """
        indices = list(indices)
        chosen = [k for k, item in enumerate(items) if item.has_face]
        synced: dict[int, np.ndarray] = {}
        if chosen:
            faces = self._generate([items[k] for k in chosen], audio_embeds[chosen], config, init_noise,
                                   generator, timer)
            with timer.measure("restore"):
                frames = torch.from_numpy(np.stack([items[k].frame for k in chosen]))  # [f,H,W,3] uint8
                matrices = np.stack([items[k].matrix for k in chosen])  # [f,2,3]
                restored = aligner.restore_batch(frames, faces, matrices).cpu().numpy()
                synced = dict(zip(chosen, restored))
        return [
            OutputFrame(index=j, source_index=item.source_index, rgb=synced.get(k, item.frame), has_face=k in synced)
            for k, (j, item) in enumerate(zip(indices, items))
        ]

    def _generate(self, items: list[SourceItem], audio_embeds: torch.Tensor, config: SyncConfig,
                  init_noise: torch.Tensor, generator: torch.Generator, timer: StageTimer) -> torch.Tensor:
        """Pasted faces [f,3,R,R] in [-1,1]-ish (not clamped) for items that all have a face."""
        from engine.face.mask import mask_to_latent, prepare_masks_and_masked_images
        from engine.models.vae import posterior_sample, vae_decode, vae_encode
        from engine.scheduler import denoise

        device, dtype = self.device, self.dtype
        f = len(items)
        with torch.inference_mode():
            with timer.measure("prepare"):
                faces = np.stack([item.face for item in items])  # [f,R,R,3] uint8
                pixel, masked, masks = prepare_masks_and_masked_images(faces)
                mask_latents = mask_to_latent(masks).to(device, dtype)  # [f,1,h,w]
                audio_embeds = audio_embeds.to(device, dtype)  # [f,50,C]
            with timer.measure("vae_encode"):
                if all(item.posterior is not None for item in items):  # prepared avatar: no VAE encode
                    (mm, ms), (rm, rs) = (
                        tuple(torch.stack([item.posterior[i][k] for item in items]).to(device, dtype) for k in (0, 1))
                        for i in (0, 1)
                    )
                    masked_latents = posterior_sample(mm, ms, generator=generator)
                    ref_latents = posterior_sample(rm, rs, generator=generator)
                else:
                    masked_latents = vae_encode(self.vae, masked.to(device, dtype), generator=generator)
                    ref_latents = vae_encode(self.vae, pixel.to(device, dtype), generator=generator)

            def to_5d(x: torch.Tensor) -> torch.Tensor:  # [f,c,h,w] -> [1,c,f,h,w]
                return x.permute(1, 0, 2, 3).unsqueeze(0)

            latents = init_noise.expand(-1, -1, f, -1, -1).clone()
            with timer.measure("unet"):
                latents = denoise(
                    self.unet, latents, to_5d(mask_latents), to_5d(masked_latents), to_5d(ref_latents),
                    audio_embeds, steps=config.steps, guidance_scale=config.guidance_scale,
                    deepcache_interval=config.effective_deepcache, eta=config.eta,
                )
            with timer.measure("vae_decode"):
                decoded = vae_decode(self.vae, latents[0].permute(1, 0, 2, 3))  # [f,3,R,R]
                m = masks.to(device, dtype)
                return decoded * (1 - m) + pixel.to(device, dtype) * m
