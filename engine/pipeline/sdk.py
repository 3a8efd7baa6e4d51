"""The Python entry point: `LipSync.from_pretrained(...)` and one call from paths or arrays to a result."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.constants import FPS, SAMPLE_RATE
from engine.errors import InvalidInputError, NoFaceError
from engine.pipeline.config import SyncConfig, resolve_config
from engine.pipeline.core import AudioPlan, LipSyncCore, OutputFrame, StageTimer
from engine.pipeline.device import Placement, choose_placement
from engine.pipeline.faces import make_landmark_source

log = logging.getLogger(__name__)


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
    num_frames: int  # output frames (official count from the audio)
    num_source_frames: int  # distinct input frames used
    fps: int
    audio_samples: int  # samples muxed with the output
    no_face_ranges: list[tuple[int, int]]  # output frame ranges passed through unchanged
    timings: dict[str, float]  # seconds per stage
    wall_seconds: float
    output_path: str | None = None
    frames: np.ndarray | None = field(default=None, repr=False)  # [L,H,W,3] when no output path was given
    audio: np.ndarray | None = field(default=None, repr=False)

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("frames", "audio", "config")}
        data["config"] = asdict(self.config)
        data["frames_per_second"] = round(self.frames_per_second, 4)
        return data

    def summary(self) -> str:
        faceless = sum(b - a for a, b in self.no_face_ranges)
        return (
            f"{self.num_frames} frames ({self.num_frames / self.fps:.2f} s) in {self.wall_seconds:.1f} s "
            f"({self.frames_per_second:.2f} frames/s) | model {self.model} {self.resolution}px on {self.device} "
            f"{self.dtype} | {self.config.steps} steps, guidance {self.config.guidance_scale}, "
            f"deepcache {self.config.deepcache_interval}, seed {self.config.seed} | "
            f"{faceless} frames without a face" + (f" | wrote {self.output_path}" if self.output_path else "")
        )


class LipSync:
    """Loaded models plus the chunked core; call it on a video and speech.

    >>> sync = LipSync.from_pretrained("latentsync-1.6", device="cuda")
    >>> result = sync("face.mp4", "speech.wav", output="out.mp4")
    """

    def __init__(self, models, placement: Placement, *, face: str = "auto", backend: str = "torch") -> None:
        self.models = models
        self.placement = placement
        self.face = face
        self.backend = backend
        self._detectors: dict = {}  # face detectors by spec, loaded once
        unet, vae, audio_encoder = models.unet, models.vae, models.audio_encoder
        if backend != "torch":  # eager torch needs no runner layer
            from engine.backends import create_runners  # lazy: optional runtimes

            runners = create_runners(models, backend, device=placement.device)
            unet, vae, audio_encoder = runners.unet, runners.vae, runners.audio_encoder
            log.log(logging.DEBUG if "auto" in backend else logging.INFO,  # auto logs its own choice
                    "backends: %s", ", ".join(f"{k}={v}" for k, v in runners.choice.items()))
        self.core = LipSyncCore(
            unet=unet, vae=vae, audio_encoder=audio_encoder, resolution=models.resolution,
            device=placement.device, dtype=placement.dtype,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str = "latentsync-1.6",
        *,
        device: str | None = None,
        dtype: str | None = None,
        face: str = "auto",
        backend: str = "torch",
        offline: bool = False,
        resolution: int | None = None,
    ) -> "LipSync":
        """Load `model` (a registry name, a local directory, or 'tiny-random') onto a device.

        `resolution` overrides the model's face resolution (256 or 512); the
        registry models carry their own (1.5: 256, 1.6: 512).
        """
        from engine.weights import load_models

        placement = choose_placement(device, dtype)
        models = load_models(model, device=placement.device, dtype=placement.dtype, offline=offline,
                             resolution=resolution)
        return cls(models, placement, face=face, backend=backend)  # load_models warned about random weights

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
    ) -> SyncResult:
        """Lip-sync `video` (path, [T,H,W,3] uint8 array or iterable of frames) to `audio`
        (path or float32 16 kHz mono array). Writes `output` (mp4) if given, else returns frames."""
        config = resolve_config(
            preset, steps=steps, guidance_scale=guidance, seed=seed,
            deepcache_interval=deepcache if deepcache else None, deepcache_off=deepcache == 0,
        )
        return self.run(video, audio, output, config=config, face=face, strict_faces=strict_faces,
                        crf=crf, progress=progress)

    def run(self, video, audio, output=None, *, config: SyncConfig, face: str | None = None,
            strict_faces: bool = False, crf: int = 18, progress=None) -> SyncResult:
        t0 = time.perf_counter()
        timer = StageTimer()
        log.info("settings: %s", config)
        with timer.measure("load_audio"):
            samples = self._load_audio(audio)
        frames, size, estimate, exact = self._open_video_counted(video)
        with timer.measure("audio_features"):
            plan: AudioPlan = self.core.plan_audio(samples)
        faces = make_landmark_source(face or self.face, self.models.resolution, self._detectors)
        out_path = Path(output) if output is not None else None
        writer = None
        collected: list[np.ndarray] = []
        no_face: list[int] = []
        sources: set[int] = set()
        produced = 0
        try:
            for item in self.core.run(frames, plan, faces, config, num_source_estimate=estimate,
                                      exact_source_count=exact, timer=timer, strict_faces=strict_faces):
                item: OutputFrame
                if not item.has_face:
                    no_face.append(item.index)
                sources.add(item.source_index)
                if out_path is not None:
                    if writer is None:
                        writer = self._open_writer(out_path, item.rgb, plan, crf)
                    with timer.measure("encode"):
                        writer.write(item.rgb)
                else:
                    collected.append(item.rgb)
                produced += 1
                if progress is not None:
                    progress(produced, plan.num_frames)
            why = getattr(getattr(faces, "tracker", None), "why_no_face", lambda: "")()  # the detector's reasons
            why = f" ({why})" if why else ""
            if produced and len(no_face) == produced:
                raise NoFaceError(f"video: expected a face in at least one frame, found none in {produced} frames{why}")
            if strict_faces and no_face:
                raise NoFaceError(f"video: expected a face in every frame, found none in frames {frame_ranges(no_face)}{why}")
            if writer is not None:
                with timer.measure("encode"):
                    writer.close()
                writer = None
        finally:
            if writer is not None:
                writer.abort()
        return SyncResult(
            model=getattr(self.models, "name", "?"), resolution=self.models.resolution,
            device=str(self.placement.device), dtype=self.placement.dtype_name, config=config,
            num_frames=produced, num_source_frames=len(sources), fps=FPS,
            audio_samples=int(plan.trimmed_audio.size), no_face_ranges=frame_ranges(no_face),
            timings=timer.as_dict(), wall_seconds=time.perf_counter() - t0,
            output_path=str(out_path) if out_path is not None else None,
            frames=np.stack(collected) if collected else None,
            audio=plan.trimmed_audio if out_path is None else None,
        )

    # ------------------------------------------------------------------
    def _load_audio(self, audio) -> np.ndarray:
        if isinstance(audio, (str, Path)):
            from engine.media import load_audio, probe

            probe(audio, require_audio=True)
            return load_audio(audio, sample_rate=SAMPLE_RATE)
        array = np.asarray(audio)
        if array.ndim != 1 or array.dtype != np.float32:
            raise InvalidInputError(f"audio: expected a path or float32 mono samples [S] at 16 kHz, found {array.dtype} {array.shape}")
        if not np.isfinite(array).all():
            raise InvalidInputError("audio: expected finite samples, found NaN or Inf")
        return array

    def _open_video(self, video):
        """-> (frames, (H, W) or None, frame count estimate or None)."""
        return self._open_video_counted(video)[:3]

    def _open_video_counted(self, video):
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
            return (f.rgb for f in iter_video_frames(video, fps=FPS)), (v.height, v.width), count, exact
        if isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise InvalidInputError(f"video: expected uint8 frames [T,H,W,3], found {video.dtype} {video.shape}")
            return iter(video), video.shape[1:3], video.shape[0], True
        return iter(video), None, None, False

    def _open_writer(self, path: Path, first: np.ndarray, plan: AudioPlan, crf: int):
        from engine.media import VideoWriter

        h, w = first.shape[:2]
        return VideoWriter(path, w, h, fps=FPS, crf=crf, audio=plan.trimmed_audio, sample_rate=SAMPLE_RATE)


def write_report(result: SyncResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_json(), indent=2))
