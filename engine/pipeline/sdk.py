"""The Python entry point: `LipSync.from_pretrained(...)` and one call from paths or arrays to a result."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import InvalidInputError, NoFaceError, expect
from engine.pipeline.config import (
    DEFAULT_LENGTH,
    DEFAULT_OUTPUT_AUDIO,
    SyncConfig,
    check_length,
    check_output_audio,
    resolve_config,
)
from engine.pipeline.core import AudioPlan, LipSyncCore, OutputFrame, StageTimer
from engine.pipeline.device import Placement, choose_placement
from engine.pipeline.faces import make_landmark_source, needs_detector

log = logging.getLogger(__name__)
# x264 preset of offline outputs: quality first by default; throughput runs and live serving pick a faster one
# (benchmarks/encode_presets.py measures encode ms/frame, bytes/s and PSNR per preset on the demo clips).
DEFAULT_ENCODE_PRESET = "medium"
DEFAULT_VIDEO_IO = "auto"  # engine.media.gpu_video.resolve_video_io: gpu only with [gpu-video] and a CUDA device
CANCEL_WAIT_S = 30.0  # how long an interrupted call waits for its job to clean up (one device batch at most)
SIGNAL_POLL_S = 0.1  # how often a waiting call lets pending signal handlers run


def frame_ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indices -> half-open [start, stop) ranges of consecutive values."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(indices):
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


@dataclass
class SyncResult:
    """What a run produced and what it cost."""

    model: str
    resolution: int
    device: str
    dtype: str
    config: SyncConfig
    num_frames: int  # output frames (the speech's length, or the official count: see `length`)
    num_source_frames: int  # distinct input frames used
    fps: int
    audio_samples: int  # samples (per channel) muxed with the output
    no_face_ranges: list[tuple[int, int]]  # output frame ranges passed through unchanged
    timings: dict[str, float]  # seconds per stage
    wall_seconds: float
    output_path: str | None = None
    frames: np.ndarray | None = field(default=None, repr=False)  # [L,H,W,3] when no output path was given
    audio: np.ndarray | None = field(default=None, repr=False)
    length: str = DEFAULT_LENGTH  # output length policy ("audio" or "official")
    backends: dict[str, str] = field(default_factory=dict)  # network group -> backend that ran it
    engine_settings: dict = field(default_factory=dict)  # device options and artifacts in effect (Runners.settings)
    output_audio: str = DEFAULT_OUTPUT_AUDIO  # what was muxed: "source" (the speech file's audio) or "model" (16 kHz)
    audio_sample_rate: int = SAMPLE_RATE  # of the muxed track
    audio_channels: int = 1
    video_io: str = "cpu"  # who decoded and encoded the video: "cpu" (PyAV) or "gpu" (NVDEC / NVENC)

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("frames", "audio", "config")}
        data["config"] = asdict(self.config)
        data["frames_per_second"] = round(self.frames_per_second, 4)
        return data

    def summary(self) -> str:
        from engine.backends.select import describe_choice

        faceless = sum(b - a for a, b in self.no_face_ranges)
        return (
            f"{self.num_frames} frames ({self.num_frames / self.fps:.2f} s) in {self.wall_seconds:.1f} s "
            f"({self.frames_per_second:.2f} frames/s) | model {self.model} {self.resolution}px on {self.device} "
            f"{self.dtype} | {self.config.steps} steps, guidance {self.config.guidance_scale}, "
            f"deepcache {self.config.deepcache_interval}, seed {self.config.seed} | "
            f"{faceless} frames without a face"
            + (f" | backends {describe_choice(self.backends)}" if self.backends else "")
            + (f" | wrote {self.output_path}" if self.output_path else "")
        )


class LipSync:
    """Loaded models plus the chunked core; call it on a video and speech.

    Thread-safe: several threads may call one object at once; their device work goes through the
    one engine core (`self.core.engine`), batched where shapes agree. `close()` stops it.

    >>> sync = LipSync.from_pretrained("latentsync-1.6", device="cuda")
    >>> result = sync("face.mp4", "speech.wav", output="out.mp4")
    """

    def __init__(self, models, placement: Placement, *, face: str = "auto", backend: str = "auto",
                 engine=None, policy=None, offline: bool = False) -> None:
        from engine.backends import create_runners, resolve_engine_config  # lazy: optional runtimes
        from engine.pipeline.faces import DetectorPool
        from engine.runtime import EnginePolicy, JobRunner

        self.models = models
        self.placement = placement
        self.face = face
        self.backend = backend
        self.policy = policy or EnginePolicy()
        self.offline = offline
        self._detectors = DetectorPool(offline=offline)  # each concurrent job leases its own detector
        # one engine configuration (engine.backends.EngineConfig) for build, export, run, bench, serve and the SDK:
        # its artifact folder and TensorRT profile default to what `engine export`/`engine build` registered
        self.engine_config = resolve_engine_config(models.name, engine)
        runners = create_runners(models, backend, device=placement.device, engine=self.engine_config)
        log.log(logging.DEBUG if "auto" in backend else logging.INFO,  # `auto` logs its own choice once
                "backends: %s", ", ".join(f"{k}={v}" for k, v in runners.choice.items()))
        self.policy = _fit_policy(self.policy, runners.choice, self.engine_config)
        self.core = LipSyncCore(
            unet=models.unet, vae=models.vae, audio_encoder=models.audio_encoder, resolution=models.resolution,
            device=placement.device, dtype=placement.dtype, runners=runners, policy=self.policy,
        )
        self._jobs = JobRunner(self.core.engine, self.policy)

    @classmethod
    def from_pretrained(
        cls,
        model: str = "latentsync-1.6",
        *,
        device: str | None = None,
        dtype: str | None = None,
        face: str = "auto",
        backend: str = "auto",
        offline: bool = False,
        resolution: int | None = None,
        engine=None,
        policy=None,
    ) -> "LipSync":
        """Load `model` (a registry name, a local directory, or 'tiny-random') onto a device.

        `resolution` overrides the model's face resolution (256 or 512); the
        registry models carry their own (1.5: 256, 1.6: 512). `backend` is what `engine run --backend` takes
        (auto: eager torch unless built artifacts are registered or named); `engine`
        (engine.backends.EngineConfig) holds the backend options; `policy` (engine.runtime.EnginePolicy) the
        engine core's batching. `offline=True` never touches the network (weights, face models).
        """
        from engine.weights import load_models

        placement = choose_placement(device, dtype)
        models = load_models(model, device=placement.device, dtype=placement.dtype, offline=offline,
                             resolution=resolution)
        return cls(models, placement, face=face, backend=backend, engine=engine, policy=policy,
                   offline=offline)  # load_models warned about random weights

    # ------------------------------------------------------------------
    def __call__(
        self,
        video,
        audio,
        output: str | Path | None = None,
        *,
        preset: str = "reference",
        steps: int | None = None,
        guidance: float | None = None,
        deepcache: int | None = None,
        seed: int | None = None,
        face=None,
        strict_faces: bool = False,
        crf: int = 18,
        progress: Callable[[int, int], None] | None = None,
        length: str = DEFAULT_LENGTH,
        encode_preset: str = DEFAULT_ENCODE_PRESET,
        output_audio: str = DEFAULT_OUTPUT_AUDIO,
        video_io: str = DEFAULT_VIDEO_IO,
    ) -> SyncResult:
        """Lip-sync `video` (path, [T,H,W,3] uint8 array or iterable of frames) to `audio`
        (path or float32 16 kHz mono array). Writes `output` (mp4) if given, else returns frames.
        `length`: "audio" (default: the output is as long as the speech, within one frame) or
        "official" (N//2 + 2 frames, two more than the speech, as the official pipeline). `encode_preset`: the x264
        preset of the output (default "medium", the quality default; "veryfast"/"ultrafast" for throughput and live
        serving: see docs/system-benchmark.md for the size/quality trade-off measured on the demo clips).
        `output_audio`: "source" (default: the output's audio is the speech file's own, at its sample rate and
        channels, trimmed or padded to the video) or "model" (the 16 kHz mono signal the model hears).
        `video_io`: "auto" (default: gpu only when the [gpu-video] extra and a CUDA device are present), "cpu"
        (PyAV) or "gpu" (NVDEC decode, NVENC encode; a typed error without them)."""
        config = resolve_config(
            preset, steps=steps, guidance_scale=guidance, seed=seed,
            deepcache_interval=deepcache if deepcache else None, deepcache_off=deepcache == 0,
        )
        return self.run(video, audio, output, config=config, face=face, strict_faces=strict_faces,
                        crf=crf, progress=progress, length=length, encode_preset=encode_preset,
                        output_audio=output_audio, video_io=video_io)

    def run(self, video, audio, output=None, *, config: SyncConfig, face: str | None = None,
            strict_faces: bool = False, crf: int = 18, progress=None, length: str = DEFAULT_LENGTH,
            encode_preset: str = DEFAULT_ENCODE_PRESET, output_audio: str = DEFAULT_OUTPUT_AUDIO,
            audio_file=None, video_io: str = DEFAULT_VIDEO_IO) -> SyncResult:
        """One job, submitted and waited for (see `submit`)."""
        handle = self.submit(video, audio, output, config=config, face=face, strict_faces=strict_faces, crf=crf,
                             progress=progress, length=length, encode_preset=encode_preset,
                             output_audio=output_audio, audio_file=audio_file, video_io=video_io)
        try:
            # Wake up now and then: a signal that lands on another thread (Ctrl-C, SIGTERM) only raises in this,
            # the main thread, when it runs Python code, not while it blocks on a lock.
            while not handle.wait(SIGNAL_POLL_S):
                pass
            return handle.result()
        except BaseException:
            # e.g. Ctrl-C / SIGTERM in the caller: stop the job and let it remove its partial output first
            t0 = time.perf_counter()
            handle.cancel()
            stopped = handle.wait(CANCEL_WAIT_S)
            log.info("job %s %.2f s after it was cancelled", "stopped" if stopped else "still running",
                     time.perf_counter() - t0)
            raise

    def submit(self, video, audio, output=None, *, config: SyncConfig | None = None, face=None,
               strict_faces: bool = False, crf: int = 18, progress=None, length: str = DEFAULT_LENGTH,
               deadline: float | None = None, encode_preset: str = DEFAULT_ENCODE_PRESET,
               output_audio: str = DEFAULT_OUTPUT_AUDIO, audio_file=None, video_io: str = DEFAULT_VIDEO_IO):
        """Queue one job and return its `JobHandle` (`result(timeout)`, `cancel()`, `done()`) at once.

        The job's stages run on their own threads (prepare: decode, faces, alignment, masks; finish:
        restore, encode); `progress(done, total)` is called from the finish thread. `deadline`
        (a `time.monotonic()` time): a job not started by then fails with DeadlineExceededError, and
        its chunks still queued then are dropped. Raises QueueFullError at once when the job queue
        is full (EnginePolicy.max_queued_jobs). `output_audio` as in `__call__`; `audio_file`: the file `audio`
        was decoded from when `audio` is samples (its own audio then goes into the output, as for a path).
        """
        config = config if config is not None else resolve_config("reference")
        check_length(length)
        check_encode_preset(encode_preset)
        check_output_audio(output_audio)
        from engine.media.gpu_video import resolve_video_io

        video_io = resolve_video_io(video_io, self.placement.device)  # typed error now, before the job is queued
        source_file = audio if isinstance(audio, (str, Path)) else audio_file
        audio, output = checked_inputs(video, audio, output)  # typed errors now, before any work is queued
        stages = _SyncJob(self, video, audio, output, config=config, face=face if face is not None else self.face,
                          strict_faces=strict_faces, crf=crf, progress=progress, length=length, deadline=deadline,
                          encode_preset=encode_preset, output_audio=output_audio, source_file=source_file,
                          video_io=video_io)
        return self._jobs.submit(stages, key=stages.key, deadline=deadline)

    def warm_up(self, configs=None, **kwargs) -> dict:
        """Compile / capture / load every shape the given SyncConfigs use, once, at start-up (sets `ready`)."""
        return self.core.warm_up(configs, **kwargs)

    @property
    def ready(self) -> bool:
        """True once `warm_up` has run (a server reports ready only after it)."""
        return self.core.engine.ready

    def close(self) -> None:
        """Cancel running and queued jobs, then stop the engine core; joins every thread."""
        self._jobs.close()
        self.core.close()

    def __enter__(self) -> "LipSync":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------
    def _load_audio(self, audio) -> np.ndarray:
        if isinstance(audio, (str, Path)):
            from engine.media import load_audio, probe

            probe(audio, require_audio=True)
            return load_audio(audio, sample_rate=SAMPLE_RATE)
        array = np.asarray(audio)
        if array.ndim != 1 or array.dtype != np.float32:
            raise InvalidInputError(f"audio: expected a path or float32 mono samples [S] at 16 kHz, found {array.dtype} {array.shape}")
        from engine.media.audio import check_float_samples

        return check_float_samples(array, "audio")  # as streaming sessions check pushed speech

    def _open_video(self, video):
        """-> (frames, (H, W) or None, frame count estimate or None)."""
        return self._open_video_counted(video)[:3]

    def _open_video_counted(self, video, video_io: str = "cpu"):
        """-> (frames, (H, W) or None, frame count or None, whether the count is exact).

        Files are probed before any model work. A 25 fps file's frames are counted
        exactly from its packets (no decoding), so a ping-pong pass keeps only the
        frames it will revisit; other rates are resampled and only estimated.
        """
        if isinstance(video, (str, Path)):
            from engine.media import count_source_frames, estimate_frame_count, iter_video_frames, probe

            info = probe(video, require_video=True)
            v = info.video
            exact = abs(v.fps - FPS) < 1e-3
            count = count_source_frames(video) if exact else estimate_frame_count(v)
            if video_io == "gpu":
                from engine.media.gpu_video import iter_gpu_video_frames

                frames = iter_gpu_video_frames(video, fps=FPS, device=_cuda_name(self.placement.device))
            else:
                frames = iter_video_frames(video, fps=FPS)
            return (f.rgb for f in frames), (v.height, v.width), count, exact
        if isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise InvalidInputError(f"video: expected uint8 frames [T,H,W,3], found {video.dtype} {video.shape}")
            return iter(video), video.shape[1:3], video.shape[0], True
        return checked_frames(video), None, None, False

    def _open_writer(self, path: Path, first: np.ndarray, plan: AudioPlan, crf: int,
                     encode_preset: str = DEFAULT_ENCODE_PRESET, track=None, video_io: str = "cpu"):
        """The output's writer: audio from `track` (engine.media.audio.SourceAudio) or the model's 16 kHz mono."""
        from engine.media import VideoWriter

        h, w = first.shape[:2]
        if video_io == "gpu":  # NVENC (crf and the x264 preset do not apply), same mux, audio and atomic rename
            from engine.media.gpu_video import GpuVideoWriter

            audio, rate = (track.samples, track.sample_rate) if track is not None else (plan.trimmed_audio, SAMPLE_RATE)
            return GpuVideoWriter(path, w, h, fps=FPS, audio=audio, sample_rate=rate,
                                  device=_cuda_name(self.placement.device))
        if track is not None:
            return VideoWriter(path, w, h, fps=FPS, crf=crf, audio=track.samples, sample_rate=track.sample_rate,
                               preset=encode_preset)
        return VideoWriter(path, w, h, fps=FPS, crf=crf, audio=plan.trimmed_audio, sample_rate=SAMPLE_RATE,
                           preset=encode_preset)


def _cuda_name(device) -> str:
    """The CUDA device the GPU video I/O uses: the placement's when it is one, else cuda:0."""
    name = str(device)
    return name if name.startswith("cuda") else "cuda"


def check_encode_preset(preset: str) -> None:
    from engine.media.writer import X264_PRESETS

    expect(preset in X264_PRESETS, InvalidInputError, "encode preset", f"one of {X264_PRESETS}", preset)


def checked_frames(frames: Iterable) -> Iterator[np.ndarray]:
    """Frames of an iterable, each checked as it arrives: uint8 [H,W,3], all of the first frame's size. A bad
    frame is an InvalidInputError naming its index, before it reaches the device (not a torch error later)."""
    size = None
    for index, frame in enumerate(frames):
        shape = getattr(frame, "shape", None)
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            raise InvalidInputError(f"video frame {index}: expected a uint8 RGB array [H,W,3], found "
                                    f"{type(frame).__name__} {shape if shape is not None else ''}".rstrip())
        if frame.dtype != np.uint8:
            raise InvalidInputError(f"video frame {index}: expected dtype uint8, found {frame.dtype}")
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise InvalidInputError(f"video frame {index}: expected the size of frame 0 ({size[1]}x{size[0]} px), "
                                    f"found {frame.shape[1]}x{frame.shape[0]} px")
        yield frame


def checked_inputs(video, audio, output):
    """(audio, output) after every check the files allow before any work (engine.media.preflight).

    Paths: the output path (not an input, writable folder, an mp4 name), the video's packets and the whole
    audio track decoded and validated; the decoded samples replace the audio path so it is read once.
    Arrays: only the output path is checked.
    """
    from engine.media import check_output, preflight

    if isinstance(video, (str, Path)) and isinstance(audio, (str, Path)):
        checked = preflight(video, audio, output)
        return checked.samples, checked.output
    if output is not None:
        output = check_output(output, inputs=(("video", video), ("audio", audio)))
    if isinstance(audio, np.ndarray) and audio.dtype == np.float32:
        from engine.media.audio import check_float_samples

        check_float_samples(audio, "audio")  # at submit, not in the job's thread
    return audio, output


def write_report(result: SyncResult, path: str | Path) -> None:
    """`engine run --report`: written atomically (a full disk is an OutputWriteError, nothing half-written)."""
    from engine.weights.checkpoints import atomic_write

    text = json.dumps(result.to_json(), indent=2)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def _fit_policy(policy, choice: dict[str, str], options):
    """Cap batches at what static engines were built for (a TensorRT profile's batch and frame range)."""
    changes = {}
    if choice.get("unet") == "tensorrt" and policy.max_unet_rows is None:
        changes["max_unet_rows"] = options.batch
    if choice.get("vae") == "tensorrt" and policy.max_vae_rows is None:
        changes["max_vae_rows"] = options.frames
    if changes:
        log.info("engine policy capped by the TensorRT profiles: %s", changes)
    return dataclasses.replace(policy, **changes) if changes else policy


class _SyncJob:
    """The stages of one SDK call (see engine.runtime.jobs): prepare in one thread, finish in another."""

    def __init__(self, sync: LipSync, video, audio, output, *, config: SyncConfig, face, strict_faces: bool,
                 crf: int, progress, length: str, deadline: float | None,
                 encode_preset: str = DEFAULT_ENCODE_PRESET, output_audio: str = DEFAULT_OUTPUT_AUDIO,
                 source_file=None, video_io: str = "cpu") -> None:
        self.video_io = video_io
        self.sync, self.video, self.audio, self.config = sync, video, audio, config
        self.encode_preset = encode_preset
        self.face, self.strict_faces, self.crf, self.progress = face, strict_faces, crf, progress
        self.length, self.deadline = length, deadline
        # the speech file's own audio goes into the output unless asked otherwise or only samples were given
        self.source_file = source_file if output_audio == "source" else None
        self.track = None  # engine.media.audio.SourceAudio, loaded in prepare
        self.out_path = Path(output) if output is not None else None
        self.timer = StageTimer(profile=sync.policy.profile)
        self.key = object()  # the job's key in the engine core's queue
        self.plan: AudioPlan | None = None
        self.faces = None
        self._lease = None
        self.t0 = time.perf_counter()

    def prepare(self, cancelled):
        sync, timer = self.sync, self.timer
        log.info("settings: %s, length %s", self.config, self.length)
        with timer.measure("load_audio"):
            samples = sync._load_audio(self.audio)
        frames, _, estimate, exact = sync._open_video_counted(self.video, self.video_io)
        with timer.measure("audio_features"):
            self.plan = sync.core.plan_audio(samples, length=self.length)
        if self.source_file is not None and self.out_path is not None:
            from engine.media.audio import load_source_audio

            with timer.measure("load_audio"):  # what the listener hears: the file's rate and channels
                self.track = load_source_audio(self.source_file, seconds=self.plan.num_frames / FPS)
        detector = None
        if needs_detector(self.face):
            self._lease = sync._detectors.lease(self.face)
            detector = self._lease.detector
        faces = make_landmark_source(self.face, sync.models.resolution, detector)
        self.faces = faces
        yield from sync.core.prepared_chunks(
            frames, self.plan, faces, self.config, job=self.key, timer=timer, num_source_estimate=estimate,
            exact_source_count=exact, strict_faces=self.strict_faces, deadline=self.deadline, cancelled=cancelled)

    def finish(self, chunks, cancelled) -> SyncResult:
        sync, timer, out_path = self.sync, self.timer, self.out_path
        writer = None
        collected: list[np.ndarray] = []
        no_face: list[int] = []
        sources: set[int] = set()
        produced = 0
        try:
            for chunk in chunks:
                for item in chunk.result(cancelled=cancelled):
                    item: OutputFrame
                    if not item.has_face:
                        no_face.append(item.index)
                    sources.add(item.source_index)
                    if out_path is not None:
                        if writer is None:
                            writer = sync._open_writer(out_path, item.rgb, self.plan, self.crf, self.encode_preset,
                                                       self.track, self.video_io)
                        with timer.measure("encode"):
                            writer.write(item.rgb)
                    else:
                        collected.append(item.rgb)
                    produced += 1
                    if self.progress is not None:
                        self.progress(produced, self.plan.num_frames)
            why = self._why_no_face() if no_face else ""
            if produced and len(no_face) == produced:
                raise NoFaceError(f"video: expected a face in at least one frame, found none in {produced} frames{why}")
            if self.strict_faces and no_face:
                raise NoFaceError(f"video: expected a face in every frame, found none in frames {frame_ranges(no_face)}{why}")
            if writer is not None:
                with timer.measure("encode"):
                    writer.close()
                writer = None
        finally:
            if writer is not None:
                writer.abort()
        plan = self.plan
        return SyncResult(
            model=getattr(sync.models, "name", "?"), resolution=sync.models.resolution,
            device=str(sync.placement.device), dtype=sync.placement.dtype_name, config=self.config,
            num_frames=produced, num_source_frames=len(sources), fps=FPS,
            audio_samples=int(self.track.samples.shape[1] if self.track is not None else plan.trimmed_audio.size),
            no_face_ranges=frame_ranges(no_face),
            timings=timer.as_dict(), wall_seconds=time.perf_counter() - self.t0,
            output_path=str(out_path) if out_path is not None else None,
            frames=np.stack(collected) if collected else None,
            audio=plan.trimmed_audio if out_path is None else None, length=self.length,
            backends=dict(sync.core.runners.choice), engine_settings=dict(sync.core.runners.settings),
            output_audio="source" if self.track is not None else "model",
            audio_sample_rate=self.track.sample_rate if self.track is not None else SAMPLE_RATE,
            audio_channels=self.track.channels if self.track is not None else 1,
            video_io=self.video_io,
        )

    def _why_no_face(self) -> str:
        """' (the detector's reasons)' when the face source knows them (too small, low score, out of frame)."""
        tracker = getattr(getattr(self, "faces", None), "tracker", None)
        why = tracker.why_no_face() if tracker is not None and hasattr(tracker, "why_no_face") else ""
        return f" ({why})" if why else ""

    def close(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
