"""`engine eval --sweep`: run one clip under many settings, time each and score it, so users pick from the frontier.

Every row is made from the same inputs with faces found once on the source (detection would cost every row
the same), then scored with the same networks (built once): SyncNet LSE-C/LSE-D/offset, the StableSyncNet
score, and fidelity (PSNR/SSIM of mouth and frame, flicker) to the baseline row (default: the `reference`
preset). With random weights (`tiny-random`, `--random-weights`) the plumbing runs end to end but the
quality numbers mean nothing; the table says so.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from engine.errors import BackendUnavailableError, EngineError, InvalidInputError, NoFaceError, expect
from engine.eval.report import EvalNetworks, EvalOptions, evaluate_clip
from engine.eval.sweep_settings import DEFAULT_BACKEND, DEFAULT_BASELINE, SweepSetting, default_settings, plan_settings

log = logging.getLogger(__name__)

RANDOM_WARNING = ("RANDOM WEIGHTS ({what}): every quality number in this sweep is meaningless; "
                  "the sweep only shows that the path runs and what it costs")  # fmt: skip
WARMUP_FRAMES = 16  # each row's untimed warm-up: one chunk of its own settings (first calls, allocator, caches)


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep and how to time it."""

    model: str = "latentsync-1.6"
    device: str | None = None  # default: CUDA when present
    dtype: str | None = None
    face: str = "auto"  # a detector or a latentsync-face-track file (the pipeline needs landmarks)
    baseline: str = DEFAULT_BASELINE  # the row every other row's fidelity is measured against
    settings: tuple[str, ...] | None = None  # None: default_settings(device)
    repeats: int = 1  # timed runs per row (median reported; the last run's video is scored)
    warmup: bool = True  # an untimed one-chunk run of each row's own settings right before timing it
    plot: bool = True  # write sweep.png (needs matplotlib: the [plot] extra)
    offline: bool = False
    resolution: int | None = None
    eval: EvalOptions = field(default_factory=EvalOptions)

    def __post_init__(self) -> None:
        expect(self.repeats >= 1, InvalidInputError, "sweep repeats", ">= 1", self.repeats)


@dataclass
class SweepRow:
    setting: SweepSetting
    status: str = "ok"  # ok | skipped (backend unavailable) | failed
    reason: str | None = None
    wall_s: float | None = None
    wall_runs_s: list[float] = field(default_factory=list)
    frames: int | None = None
    setup_s: float | None = None  # backend setup (export, session or engine build), not in wall_s
    output: str | None = None
    timings: dict = field(default_factory=dict)
    stream: dict | None = None
    metrics: dict = field(default_factory=dict)  # flat: lse_c, lse_d, av_offset, stable_*, psnr_*, ssim_*, flicker_*


@dataclass
class SweepTable:
    """A sweep's result: rows plus what they were measured on."""

    video: str
    audio: str
    model: str
    device: str
    dtype: str
    baseline: str
    random_model: bool
    random_eval_weights: bool
    rows: list[SweepRow]
    notes: list[str] = field(default_factory=list)
    face_frames: int = 0  # source frames with a face

    @property
    def meaningless(self) -> bool:
        return self.random_model or self.random_eval_weights

    @property
    def warning(self) -> str | None:
        what = [w for w, on in (("model", self.random_model), ("eval networks", self.random_eval_weights)) if on]
        return RANDOM_WARNING.format(what=" and ".join(what)) if what else None


def check_inputs(video: str, audio: str, networks: EvalNetworks) -> np.ndarray:
    """Typed errors for unusable inputs before anything expensive; -> the speech (float32 16 kHz mono)."""
    from engine.eval.lse import MIN_WINDOWS
    from engine.eval.stable_syncnet import WINDOW_FRAMES
    from engine.eval.syncnet import LIP_FRAMES
    from engine.media import load_audio, probe

    probe(video, require_video=True)
    probe(audio, require_audio=True)
    speech = load_audio(audio, sample_rate=SAMPLE_RATE)
    need = max(LIP_FRAMES + MIN_WINDOWS if networks.syncnet is not None else 1,
               WINDOW_FRAMES if networks.stable is not None else 1)  # fmt: skip
    frames = speech.size // SAMPLES_PER_FRAME
    expect(frames >= need, InvalidInputError, f"{audio}: speech",
           f"at least {need} frames ({need * SAMPLES_PER_FRAME / SAMPLE_RATE:.2f} s) for one sync window",
           f"{frames} frames ({speech.size / SAMPLE_RATE:.2f} s)")  # fmt: skip
    return speech


def source_faces(spec: str, video: str) -> tuple[list, np.ndarray]:
    """Faces of the source once: (boxes per source frame, landmarks [T,3,2] with NaN rows where none)."""
    from engine.eval.inputs import face_boxes

    boxes, landmarks = face_boxes(spec, None, video)
    expect(landmarks is not None, InvalidInputError, "sweep --face",
           "a detector (auto | insightface | mediapipe) or a latentsync-face-track file", f"a box list {spec!r}")
    if not any(b is not None for b in boxes):
        raise NoFaceError(f"{video}: expected a face (face source {spec!r}) in at least one frame, found none "
                          f"in {len(boxes)} frames")
    nan = np.full((3, 2), np.nan, np.float32)
    return boxes, np.stack([nan if p is None else np.asarray(p, np.float32) for p in landmarks])


def output_faces(boxes: list, landmarks: np.ndarray, num_output: int) -> tuple[list, list]:
    """Source faces laid out on the output timeline (the official ping-pong loop of the source)."""
    from engine.pipeline.frames import pingpong_index

    index = [pingpong_index(i, len(boxes)) for i in range(num_output)]
    points = [None if np.isnan(landmarks[j]).any() else landmarks[j] for j in index]
    return [boxes[j] for j in index], points


def run_sweep(video: str | Path, audio: str | Path, out_dir: str | Path, networks: EvalNetworks,
              options: SweepOptions = SweepOptions(), *, sync=None,
              progress: Callable[[str, int, int], None] | None = None) -> SweepTable:
    """Run every setting on (video, audio), score each video, write the table files into `out_dir`.

    `sync` (a loaded `LipSync`) skips loading `options.model`. Returns the table (also written as
    sweep.json / sweep.csv / sweep.md / sweep.png). `progress(label, frames_done, frames_total)` follows the
    frames made over all rows (warm-ups and scoring are not counted; the label names the row and the stage).

    Timing: each row gets an untimed warm-up of one chunk with its own settings just before it is timed, so
    no row absorbs first-call costs (lazy initialisation, allocator growth, caches) for the others."""
    from engine.eval.sweep_table import write_table

    if options.plot:
        from engine.extras import require

        require("plot", what="the sweep's quality-vs-speed plot (or --no-plot)")
    video, audio, out_dir = str(video), str(audio), Path(out_dir)
    speech = check_inputs(video, audio, networks)
    settings = list(options.settings) if options.settings is not None else default_settings(_device(options, sync))
    planned, notes = plan_settings(options.baseline, settings)
    boxes, landmarks = source_faces(options.face, video)  # NoFaceError before any model work
    if sync is None:
        from engine.pipeline.sdk import LipSync

        sync = LipSync.from_pretrained(options.model, device=options.device, dtype=options.dtype, face=options.face,
                                       offline=options.offline, resolution=options.resolution)  # fmt: skip
    table = SweepTable(
        video=video, audio=audio, model=getattr(sync.models, "name", options.model),
        device=str(sync.placement.device), dtype=sync.placement.dtype_name, baseline=planned[0].name,
        random_model=bool(getattr(sync.models, "is_random", False)), random_eval_weights=networks.random_weights,
        rows=[], notes=notes, face_frames=sum(b is not None for b in boxes),
    )  # fmt: skip
    if table.warning:
        log.warning(table.warning)
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    from engine.pipeline.faces import LandmarkArraySource

    faces = LandmarkArraySource(landmarks)
    runners = _Runners(sync, faces, video, speech, runs_dir, options.warmup)
    reference: str | None = None
    eval_faces: tuple[list, list] | None = None
    per_row = speech.size // SAMPLES_PER_FRAME  # frames per row until the first row tells the exact count
    report = progress or (lambda label, done, total: None)
    done = 0
    for k, setting in enumerate(planned):
        baseline = k == 0  # without it nothing can be compared: its errors end the sweep, with their own type
        label = f"sweep {k + 1}/{len(planned)} {setting.name}"
        total = per_row * len(planned)
        row = runners.run(setting, runs_dir / f"{k:02d}_{_slug(setting.name)}.mp4", options.repeats,
                          raise_errors=baseline, progress=lambda n: report(label, done + n, total))  # fmt: skip
        table.rows.append(row)
        if row.status == "ok":
            per_row = row.frames
        done = per_row * (k + 1)
        report(label, done, per_row * len(planned))
        if row.status == "ok":
            if eval_faces is None:
                eval_faces = output_faces(boxes, landmarks, row.frames)
            reference = reference or row.output
            report(f"{label}: scoring", done, per_row * len(planned))
            try:
                row.metrics = _score(row, audio, eval_faces, networks, reference, options.eval)
            except EngineError as exc:
                if baseline:
                    raise
                row.status, row.reason = "failed", f"scoring: {type(exc).__name__}: {exc}"
        if row.status == "ok":
            log.info("sweep %s: %.2f s, %.2f frames/s %s", setting.name, row.wall_s, row.frames / row.wall_s,
                     {k: v for k, v in row.metrics.items() if v is not None})  # fmt: skip
        else:
            log.warning("sweep %s: %s (%s)", setting.name, row.status, row.reason)
        write_table(table, out_dir, plot=options.plot)  # after every row: a long sweep that stops keeps its rows
    return table


def _device(options: SweepOptions, sync) -> str:
    if sync is not None:
        return str(sync.placement.device)
    import torch

    return options.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _score(row: SweepRow, audio: str, faces: tuple[list, list], networks: EvalNetworks, reference: str,
           options: EvalOptions) -> dict:
    """Flat metrics of one row's video (sync vs the speech, fidelity vs the baseline's video)."""
    boxes, points = faces
    report = evaluate_clip(row.output, audio, boxes, networks, landmarks=points, reference=reference, options=options)
    lse, stable, fid = report.lse or {}, report.stable or {}, report.fidelity or {}
    return {
        "lse_c": lse.get("lse_c"), "lse_d": lse.get("lse_d"), "av_offset": lse.get("av_offset"),
        "stable_mean": stable.get("mean_prob"), "stable_in_sync": stable.get("frac_in_sync"),
        "psnr_mouth": fid.get("psnr_mouth"), "psnr_frame": fid.get("psnr_frame"),
        "ssim_mouth": fid.get("ssim_mouth"), "ssim_frame": fid.get("ssim_frame"),
        "flicker_mouth": fid.get("flicker_mouth"), "flicker_reference": fid.get("flicker_mouth_reference"),
    }  # fmt: skip


class _Runners:
    """One `LipSync` per backend over the same loaded models, built on first use (setup timed apart)."""

    def __init__(self, sync, faces, video: str, speech: np.ndarray, runs_dir: Path, warmup: bool) -> None:
        self.syncs: dict[str, object] = {DEFAULT_BACKEND: sync}
        self.setup: dict[str, float] = {DEFAULT_BACKEND: 0.0}
        self.failed: dict[str, str] = {}
        self.faces, self.video, self.speech, self.runs_dir, self.warmup = faces, video, speech, runs_dir, warmup

    def _sync_for(self, backend: str):
        if backend in self.failed:
            raise _Skip(self.failed[backend])
        if backend not in self.syncs:
            from engine.backends import unavailable_reason
            from engine.pipeline.sdk import LipSync

            base = self.syncs[DEFAULT_BACKEND]
            why = unavailable_reason(backend, base.placement.device)
            if why is not None:
                self.failed[backend] = f"{backend} unavailable: {why}"
                raise _Skip(self.failed[backend])
            t0 = time.perf_counter()
            try:
                self.syncs[backend] = LipSync(base.models, base.placement, face=base.face, backend=backend)
            except Exception as exc:  # noqa: BLE001 - an unusable backend is a skipped row, with its reason
                self.failed[backend] = f"{type(exc).__name__}: {exc}"
                raise _Skip(self.failed[backend]) from exc
            self.setup[backend] = time.perf_counter() - t0
        return self.syncs[backend]

    def run(self, setting: SweepSetting, output: Path, repeats: int, *, raise_errors: bool = False,
            progress: Callable[[int], None] | None = None) -> SweepRow:
        """Time `repeats` runs of `setting` into `output` (each after an untimed one-chunk warm-up of the same
        setting); an unusable backend or (unless `raise_errors`) a failing run gives a skipped / failed row
        instead of an exception."""
        from engine.eval.sweep_runs import run_setting

        row = SweepRow(setting)
        try:
            sync = self._sync_for(setting.backend)
            row.setup_s = self.setup[setting.backend]
            if self.warmup:
                self._warm_up(sync, setting)
            for _ in range(repeats):
                result = run_setting(sync, setting, self.video, self.speech, self.faces, output, progress)
                row.wall_runs_s.append(result.wall_s)
        except _Skip as skip:
            if raise_errors:
                raise BackendUnavailableError(f"sweep baseline {setting.name!r}: {skip}") from skip
            row.status, row.reason = "skipped", str(skip)
            return row
        except Exception as exc:  # noqa: BLE001 - one broken setting must not lose the others' hours of work
            if raise_errors:
                raise
            log.exception("sweep setting %s failed", setting.name)
            row.status, row.reason = "failed", f"{type(exc).__name__}: {exc}"
            return row
        row.wall_s = statistics.median(row.wall_runs_s)
        row.frames, row.output, row.timings, row.stream = result.frames, str(output), result.timings, result.stream
        return row


    def _warm_up(self, sync, setting: SweepSetting) -> None:
        """One untimed chunk (WARMUP_FRAMES of speech) with this row's own settings, written and deleted."""
        from engine.eval.sweep_runs import run_setting

        path = self.runs_dir / f".warmup_{_slug(setting.name)}.mp4"
        try:
            run_setting(sync, setting, self.video, self.speech[: WARMUP_FRAMES * SAMPLES_PER_FRAME], self.faces, path)
        finally:
            path.unlink(missing_ok=True)


class _Skip(Exception):
    """A row that cannot run here (its backend is unavailable)."""
