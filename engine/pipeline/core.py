"""The chunked lip-sync core: frames and speech in, finished frames out, one chunk at a time.

Everything else (offline files, the SDK, streaming sessions) drives this core.
It never holds the whole video: source frames are decoded lazily, and only the
frames a ping-pong pass will revisit are kept (spilled to a temporary file
beyond a small RAM budget). Device work goes through the core's engine
(`engine.runtime.EngineCore`): one thread calls every network, batching chunks
of concurrent callers; the calling thread prepares chunks ahead and restores
the finished ones, so host work overlaps with device work.

Faithful by default to the official `LipsyncPipeline.__call__` (spec §1.3):
L = floor(N/2) + 2 output frames from N whisper features; ping-pong loop of the
source when L > T; one initial noise frame shared by all frames of all chunks;
chunks of 16 starting at frame 16·i; per chunk the VAE posterior sample of the
masked faces, then of the reference faces, from one seeded generator; DDIM with
zero-audio CFG; paste in pixel space with the mouth mask; restore into the frame.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.constants import SAMPLES_PER_FRAME
from engine.errors import InvalidInputError
from engine.pipeline.config import SyncConfig, output_frame_count
from engine.runtime.heap import trim_heap
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
    """Time per named stage, summed over a run; safe to add to from several threads.

    Stages overlap when they run on different threads (prepare, device, finish), so their sum can
    exceed the wall time. Spans never synchronise the GPU unless `profile` (exact per-stage times on
    CUDA, at the cost of serialising the device at every boundary).
    """

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # the timing thread's CPU time
    profile: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def measure(self, stage: str) -> "_Span":
        return _Span(self, stage)

    def add(self, stage: str, seconds: float, cpu_seconds: float | None = None) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            if cpu_seconds is not None:
                self.cpu_seconds[stage] += cpu_seconds

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 6) for k, v in self.seconds.items()}

    def cpu_dict(self) -> dict[str, float]:
        """CPU seconds per stage of the threads that ran it (excludes waiting: wall minus this is time off-CPU;
        native helper threads a stage starts, e.g. x264's, are not included)."""
        with self._lock:
            return {k: round(v, 6) for k, v in self.cpu_seconds.items()}


class _Span:
    def __init__(self, timer: StageTimer, stage: str) -> None:
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        if self.timer.profile:
            _sync_cuda()
        self.t0 = time.perf_counter()
        self.c0 = time.thread_time()

    def __exit__(self, *exc) -> None:
        if self.timer.profile:
            _sync_cuda()  # asynchronous GPU work is charged to the stage that queued it
        self.timer.add(self.stage, time.perf_counter() - self.t0, time.thread_time() - self.c0)


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
    num_frames: int  # output frames: L = N//2 + 2 (official) or the speech's length (see LENGTH_POLICIES)
    samples: np.ndarray  # float32 [S] at 16 kHz
    official_frames: int | None = None  # L; chunks are laid out over it, so the frames never change

    @property
    def layout_frames(self) -> int:
        return self.official_frames if self.official_frames is not None else self.num_frames

    @property
    def trimmed_audio(self) -> np.ndarray:
        """Audio muxed with the output: the first 640·L samples (official trim; shorter audio stays shorter)."""
        return self.samples[: self.num_frames * SAMPLES_PER_FRAME]

    def windows(self, start: int, stop: int) -> torch.Tensor:
        """Per-frame audio windows [stop-start, 50, C] for output frames start..stop-1."""
        from engine.audio import frame_windows

        return frame_windows(self.features, start, stop)

    def chunks(self, chunk_frames: int) -> list[tuple[int, int, int]]:
        """(start, stop, emit) per chunk: the official layout over `layout_frames`; only the first `emit`
        frames of a chunk are output, and chunks past `num_frames` are not made at all."""
        spans = []
        for start in range(0, self.layout_frames, chunk_frames):
            if start >= self.num_frames:
                break
            stop = min(start + chunk_frames, self.layout_frames)
            spans.append((start, stop, min(stop, self.num_frames) - start))
        return spans


class LipSyncCore:
    """Runs the official chunked denoising over a stream of frames.

    `unet`, `vae`, `audio_encoder` are the loaded modules (kept as the model's weights; the core never
    calls them directly). `runners` (engine.backends.Runners) are what the engine core's device thread
    calls; by default eager torch runners over those modules. `policy` sets batching and queue bounds.
    """

    def __init__(self, *, unet, vae, audio_encoder, resolution: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, runners=None, policy=None) -> None:
        from engine.backends.torch_backend import torch_runners
        from engine.runtime import AudioEncoderProxy, EngineCore

        self.unet = unet
        self.vae = vae
        self.resolution = int(resolution)
        self.device = torch.device(device)
        self.dtype = dtype
        self.latent_size = self.resolution // 8
        runners = runners if runners is not None else torch_runners(unet, vae, audio_encoder)
        self.engine = EngineCore(runners, device=self.device, policy=policy,
                                 fp32_decoder=_fp32_decoder_factory(vae) if vae is not None else None)
        self.audio_encoder = AudioEncoderProxy(self.engine)

    @property
    def runners(self):
        return self.engine.runners

    @property
    def policy(self):
        return self.engine.policy

    def new_aligner(self):
        """A face aligner on the run device (its smoothing state belongs to one job)."""
        from engine.face.align import FaceAligner

        return FaceAligner(self.resolution, device=self.device)

    def vae_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) [f,4,R/8,R/8] of pixels [f,3,R,R] in [-1,1], on the device thread (avatars)."""
        from engine.runtime.proxies import vae_posterior_on_device

        return vae_posterior_on_device(self.engine, pixels)

    def warm_up(self, configs: Iterable[SyncConfig] | None = None, **kwargs) -> dict:
        """Run every shape `configs` will use once (see engine.pipeline.warmup.warm_up); sets `engine.ready`."""
        from engine.pipeline.warmup import warm_up

        return warm_up(self, configs, **kwargs)

    def close(self) -> None:
        """Stop the engine core's device thread (queued work fails)."""
        self.engine.close()

    # ------------------------------------------------------------------ audio
    def plan_audio(self, samples: np.ndarray, *, length: str = "official") -> AudioPlan:
        """Whisper features for the whole clip (the official path is whole-clip: global max, 30 s windows).

        `length` sets the output frame count: "official" (N//2 + 2) or "audio" (the speech's length).
        """
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
        official = official_frame_count(features.shape[0])
        return AudioPlan(features=features, num_frames=output_frame_count(official, samples.size, length),
                         samples=samples, official_frames=official)

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
        """Yield the output frames in order, chunk by chunk.

        Chunks are prepared `policy.prefetch_chunks` ahead of the one being finished, so the host
        work of the next chunks overlaps with the device work of this one. `strict_faces`: once a
        frame without a face is seen, stop generating and only scan the remaining frames (the caller
        raises with the complete ranges).
        """
        timer = timer or StageTimer(profile=self.policy.profile)
        job = object()
        pending: deque = deque()
        try:
            for chunk in self.prepared_chunks(frames, audio, faces, config, job=job, timer=timer,
                                              num_source_estimate=num_source_estimate,
                                              exact_source_count=exact_source_count, strict_faces=strict_faces):
                pending.append(chunk)
                while len(pending) > self.policy.prefetch_chunks:
                    yield from self._finished(pending.popleft(), on_chunk)
            while pending:
                yield from self._finished(pending.popleft(), on_chunk)
        finally:
            self.engine.cancel_job(job)  # an abandoned run leaves nothing queued

    @staticmethod
    def _finished(chunk, on_chunk) -> Iterator[OutputFrame]:
        frames = chunk.result()
        yield from frames
        if on_chunk is not None and frames:
            on_chunk(frames[0].index, frames[-1].index + 1)

    def prepared_chunks(self, frames: Iterable, audio: AudioPlan, faces: FaceLandmarkSource, config: SyncConfig, *,
                        job: Hashable, timer: StageTimer, num_source_estimate: int | None = None,
                        exact_source_count: bool = False, strict_faces: bool = False,
                        deadline: float | None = None, cancelled: Callable[[], bool] | None = None):
        """The prepare stage of one job: yields each chunk as soon as its device work is queued.

        Owns the job's cursor, aligner and generator (one job, one thread). Submits block while the
        engine's queue is full (the prepare stage runs at most a few chunks ahead anyway).
        """
        spans = audio.chunks(config.chunk_frames)
        generated = spans[-1][1] if spans else 0
        aligner = self.new_aligner()
        cursor = SourceCursor(frames, faces, aligner, num_output=generated, num_source_estimate=num_source_estimate,
                              exact_count=exact_source_count, timer=timer, device_faces=True)
        generator, init_noise = self.start_noise(config.seed)
        scan_only = False
        try:
            for start, stop, emit in spans:
                items = cursor.take(stop - start)
                scan_only = scan_only or (strict_faces and not all(item.has_face for item in items[:emit]))
                if scan_only:  # strict faces: no more device work, the caller reports the ranges
                    from engine.pipeline.chunks import PendingChunk

                    yield PendingChunk(items, list(range(start, stop)), [], None, aligner, timer, emit=emit)
                    continue
                yield self.submit_chunk(items, range(start, stop), audio.windows(start, stop), config, init_noise,
                                        generator, aligner, timer, job=job, emit=emit, deadline=deadline,
                                        block=True, cancelled=cancelled)
                trim_heap()  # per-chunk temporaries would otherwise pile up in glibc's arenas
        finally:
            cursor.close()

    # ------------------------------------------------------------------ one chunk
    def sync_chunk(self, items: list[SourceItem], indices: Iterable[int], audio_embeds: torch.Tensor,
                   config: SyncConfig, init_noise: torch.Tensor, generator: torch.Generator, aligner,
                   timer: StageTimer) -> list[OutputFrame]:
        """Generate the mouths of one chunk; frames without a face pass through unchanged.

        Safe from any thread: the device work runs on the engine core's device thread (possibly in a
        batch with other callers' chunks), the restore in the calling thread. `audio_embeds` [f,50,C]
        holds one window per item. Frames with a face are denoised together (their count sets the
        chunk's GroupNorm statistics, as in the official pipeline when every frame has a face).
        """
        return self.submit_chunk(items, indices, audio_embeds, config, init_noise, generator, aligner,
                                 timer).result()

    def submit_chunk(self, items: list[SourceItem], indices: Iterable[int], audio_embeds: torch.Tensor,
                     config: SyncConfig, init_noise: torch.Tensor, generator: torch.Generator, aligner,
                     timer: StageTimer, *, deadline: float | None = None, job: Hashable | None = None,
                     emit: int | None = None, block: bool = False, cancelled: Callable[[], bool] | None = None):
        """Queue one chunk's device work; returns a `PendingChunk` whose `result()` gives its OutputFrames.

        `deadline` (a `time.monotonic()` time): if the chunk is still queued then, `result()` raises
        DeadlineExceededError and no device work is done. A full engine queue raises QueueFullError
        here at once (`block=True` waits instead). Chunks of one `job` (default: one per generator)
        run in submission order; `engine.cancel_job(job)` drops the queued ones.
        """
        from engine.pipeline.chunks import PendingChunk, prepare_chunk

        indices = list(indices)
        if len(indices) != len(items) or audio_embeds.shape[0] != len(items):
            raise InvalidInputError(f"chunk: expected one index and one audio window per item ({len(items)}), "
                                    f"found {len(indices)} indices and {audio_embeds.shape[0]} windows")
        chosen = [k for k, item in enumerate(items) if item.has_face]
        future = None
        if chosen:
            with torch.inference_mode(), timer.measure("prepare"):
                work = prepare_chunk(items, chosen, audio_embeds, config, init_noise, generator, device=self.device,
                                     dtype=self.dtype, first_frame=indices[0])
            future = self.engine.submit(work, job=job if job is not None else id(generator), deadline=deadline,
                                        block=block, cancelled=cancelled)
        return PendingChunk(items, indices, chosen, future, aligner, timer, emit=emit)


def _fp32_decoder_factory(vae) -> Callable[[], Callable]:
    """Builds (once, on the device thread) a float32 copy of the VAE decoder for the non-finite retry."""

    def build():
        from engine.backends.base import VaeRunner
        from engine.backends.torch_backend import TorchExecutor

        vae32 = copy.deepcopy(vae).float()
        runner = VaeRunner(TorchExecutor("vae_encoder", vae32), TorchExecutor("vae_decoder", vae32))
        log.info("built a float32 VAE decoder for non-finite retries")
        return runner.decode_latents

    return build
