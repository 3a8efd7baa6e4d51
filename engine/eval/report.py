"""One clip's evaluation: SyncNet LSE-C/LSE-D, StableSyncNet score and fidelity, from files to a report."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.constants import SAMPLES_PER_FRAME
from engine.errors import InvalidInputError
from engine.eval.crops import (
    MAX_GAP,
    MIN_TRACK,
    STABLE_FACE_SIZE,
    Box,
    CropTrack,
    crop_face,
    split_tracks,
    square_face_crop,
)
from engine.eval.fidelity import FidelityAccumulator
from engine.eval.lse import BATCH_SIZE, VSHIFT, LseResult, average_tracks, evaluate_lse
from engine.eval.stable_syncnet import WINDOW_FRAMES, StableSyncNet, stable_sync_score
from engine.eval.syncnet import SyncNetS
from engine.eval.video import frame_count, iter_rgb_frames, load_audio_int16

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0  # int16 -> [-1, 1) float, as librosa.load returns it


@dataclass(frozen=True)
class EvalOptions:
    vshift: int = VSHIFT
    batch_size: int = BATCH_SIZE
    stable_stride: int = WINDOW_FRAMES  # frames between StableSyncNet window starts
    max_gap: int = MAX_GAP
    min_track: int = MIN_TRACK
    compute_ssim: bool = True

    def __post_init__(self) -> None:
        for name in ("vshift", "batch_size", "stable_stride", "min_track"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"EvalOptions.{name}: expected >= 1, found {getattr(self, name)}")


@dataclass(frozen=True)
class EvalNetworks:
    syncnet: SyncNetS | None = None
    stable: StableSyncNet | None = None
    random_weights: bool = False  # scores are then meaningless (arithmetic and plumbing only)


@dataclass(frozen=True)
class EvalReport:
    video: str
    audio: str
    reference: str | None
    frames: int
    audio_samples: int
    face_tracks: list[tuple[int, int]]  # [start, stop) frame ranges
    random_weights: bool
    lse: dict | None = None  # av_offset, lse_d, lse_c, tracks: [...]
    stable: dict | None = None  # mean_prob, frac_in_sync, n_windows
    fidelity: dict | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_clip(
    video: str | Path,
    audio: str | Path,
    boxes: Sequence[Box | None],
    networks: EvalNetworks,
    *,
    landmarks: Sequence[np.ndarray | None] | None = None,
    reference: str | Path | None = None,
    options: EvalOptions = EvalOptions(),
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalReport:
    """Evaluate a lip-synced `video` against the driving `audio` (and a `reference` run for fidelity).

    `boxes` holds one face box per 25 fps frame of `video` (None where there is no face); missing trailing
    entries count as no face. `landmarks` (optional, [3,2] official alignment points per frame) give
    StableSyncNet the affine-aligned 256 px face it was trained on; frames without them use a square
    crop around the box. Frames are decoded once; memory is the crops (150 kB/frame, +196 kB with
    StableSyncNet), not the frames. `progress(stage, done, total)` follows the work: stage "frames" (decoding
    and cropping), then "SyncNet" and "StableSyncNet" (windows scored).
    """
    progress = progress or (lambda stage, done, total: None)
    samples = load_audio_int16(audio)  # typed errors for no/empty audio before any decoding work
    if networks.syncnet is None and networks.stable is None and reference is None:
        raise InvalidInputError("eval: expected a SyncNet, a StableSyncNet or a reference, found none")
    frames_total = frame_count(video)
    if frames_total == 0:
        raise InvalidInputError(f"{video}: expected video frames, found none")
    boxes = list(boxes[:frames_total]) + [None] * max(0, frames_total - len(boxes))
    tracks = split_tracks(boxes, max_gap=options.max_gap, min_track=options.min_track)
    lse_crops: list[list[np.ndarray]] = [[] for _ in tracks]
    stable_faces = _StableFaces(tracks, landmarks) if networks.stable is not None else None
    fidelity = FidelityAccumulator(compute_ssim=options.compute_ssim) if reference is not None else None
    ref_frames = iter_rgb_frames(reference) if reference is not None else None
    last_needed = frames_total if fidelity is not None else max(t.stop for t in tracks)
    for index, rgb in enumerate(iter_rgb_frames(video)):
        if index >= last_needed:  # past the last face track (and no fidelity pass): stop decoding
            break
        progress("frames", index + 1, last_needed)
        for k, track in enumerate(tracks):
            if track.start <= index < track.stop:
                j = index - track.start
                geometry = (track.size[j], track.cx[j], track.cy[j])
                if networks.syncnet is not None:
                    lse_crops[k].append(crop_face(rgb, *geometry)[:, :, ::-1])  # BGR; resize commutes with the swap
                if stable_faces is not None:
                    stable_faces.add(k, index, rgb, geometry)
        if fidelity is not None:
            ref = next(ref_frames, None)
            if ref is not None:
                fidelity.update(rgb, ref, boxes[index])
    report = EvalReport(
        video=str(video), audio=str(audio), reference=None if reference is None else str(reference),
        frames=frames_total, audio_samples=int(samples.size), face_tracks=[(t.start, t.stop) for t in tracks],
        random_weights=networks.random_weights,
    )  # fmt: skip
    if networks.syncnet is not None:
        lse = _lse(networks.syncnet, tracks, lse_crops, samples, options, _Windows("SyncNet", progress))
        report = dataclasses.replace(report, lse=lse)
    if networks.stable is not None:
        stable = _stable(networks.stable, tracks, stable_faces.faces, samples, options,
                         _Windows("StableSyncNet", progress))
        report = dataclasses.replace(report, stable={**stable, "face_crop": stable_faces.kind()})
    if fidelity is not None:
        report = dataclasses.replace(report, fidelity=dataclasses.asdict(fidelity.result()))
    return report


def _track_audio(samples: np.ndarray, track: CropTrack) -> np.ndarray:
    return samples[track.start * SAMPLES_PER_FRAME : track.stop * SAMPLES_PER_FRAME]


class _Windows:
    """Window progress summed over face tracks: `track(k)` gives the callback for the k-th track's batches."""

    def __init__(self, stage: str, progress) -> None:
        self.stage, self.progress, self.done, self.total = stage, progress, 0, 0

    def on_batch(self, done: int, total: int) -> None:
        self.progress(self.stage, self.done + done, self.total + total)
        if done == total:  # the track is finished: later tracks count on top of it
            self.done, self.total = self.done + done, self.total + total


def _lse(net, tracks, crops, samples, options: EvalOptions, windows: _Windows) -> dict:
    results: list[tuple[CropTrack, LseResult]] = []
    errors = []
    for track, stack in zip(tracks, crops):
        try:
            if not stack:
                raise InvalidInputError(f"track {track.start}..{track.stop}: expected frames, found none decoded")
            result = evaluate_lse(net, np.stack(stack), _track_audio(samples, track), vshift=options.vshift,
                                  batch_size=options.batch_size, on_batch=windows.on_batch)  # fmt: skip
        except InvalidInputError as exc:  # this track has too little audio; others may still score
            errors.append(str(exc))
            continue
        results.append((track, result))
    if not results:
        raise InvalidInputError("; ".join(errors))
    offset, lse_d, lse_c = average_tracks([r for _, r in results])
    return {
        "av_offset": offset,
        "lse_d": lse_d,
        "lse_c": lse_c,
        "tracks": [{"start": t.start, "stop": t.stop, **dataclasses.asdict(r)} for t, r in results],
    }


def _stable(net, tracks, faces, samples, options: EvalOptions, windows: _Windows) -> dict:
    from engine.eval.syncnet_mel import melspectrogram

    starts: list[int] = []
    probs: list[float] = []
    errors = []
    for track, stack in zip(tracks, faces):
        wav = _track_audio(samples, track).astype(np.float32) / INT16_SCALE
        try:
            if not stack or wav.size == 0:
                raise InvalidInputError(f"track {track.start}..{track.stop}: expected frames and audio, found "
                                        f"{len(stack)} frames and {wav.size} samples")
            result = stable_sync_score(net, np.stack(stack), melspectrogram(wav), stride=options.stable_stride,
                                       on_batch=windows.on_batch)
        except InvalidInputError as exc:
            errors.append(str(exc))
            continue
        starts.extend(track.start + s for s in result.window_starts)
        probs.extend(result.window_probs)
    if not probs:
        raise InvalidInputError("; ".join(errors))
    values = np.asarray(probs)
    return {
        "mean_prob": float(values.mean()),
        "frac_in_sync": float((values > 0.5).mean()),
        "n_windows": len(probs),
        "window_starts": starts,
        "window_probs": probs,
    }


class _StableFaces:
    """256 px faces per track: affine-aligned (official, from landmarks) where possible, else box squares."""

    def __init__(self, tracks: Sequence[CropTrack], landmarks: Sequence[np.ndarray | None] | None):
        self.landmarks = list(landmarks) if landmarks is not None else []
        self.faces: list[list[np.ndarray]] = [[] for _ in tracks]
        self.aligners: dict[int, object] = {}
        self.counts = {"aligned": 0, "box-square": 0}

    def add(self, track: int, index: int, rgb: np.ndarray, geometry: tuple[float, float, float]) -> None:
        points = self.landmarks[index] if index < len(self.landmarks) else None
        if points is None:
            self.faces[track].append(square_face_crop(rgb, *geometry))
            self.counts["box-square"] += 1
            return
        if track not in self.aligners:  # smoothing state per track, like one official pipeline call
            from engine.face import FaceAligner

            self.aligners[track] = FaceAligner(STABLE_FACE_SIZE)
        aligner = self.aligners[track]
        crop, _ = aligner.align(rgb, np.asarray(points, dtype=np.float32))
        self.faces[track].append(aligner.resize_to_model(crop))
        self.counts["aligned"] += 1

    def kind(self) -> str:
        used = [k for k, v in self.counts.items() if v]
        return used[0] if len(used) == 1 else "mixed"
