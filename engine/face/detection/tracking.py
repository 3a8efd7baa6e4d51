"""Keeps the target face the same person across frames and reports frames without a usable face as ranges.

The official code takes the largest face of every frame and aborts on the first frame without one. Here the
first target is the official choice (or the face at a user-given box); later frames take the candidate that
continues it (box overlap, else nearest centre), so two faces whose sizes swap do not swap the target.
Frames with no usable face pass through and are reported as [start, stop) ranges with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from engine.errors import InvalidInputError, NoFaceError, expect
from engine.face.detection.base import Box, FaceObservation, FaceSource, FrameFaces, box_iou

log = logging.getLogger(__name__)

MAX_LISTED_RANGES = 20  # in error messages


@dataclass(frozen=True)
class TrackerConfig:
    detect_every: int = 1  # run the detector on every N-th frame; track / interpolate in between
    min_iou: float = 0.3  # a face continues the track when its box overlaps the last target box this much
    max_center_shift: float = 0.5  # ... or when its centre moved less than this many face sizes
    reacquire_after: int = 25  # frames without the target before the nearest other face may become the target
    strict: bool = False  # raise NoFaceError instead of passing frames without a face through
    target_box: Box | None = None  # a user-given box choosing the person in the first frame with faces

    def __post_init__(self) -> None:
        expect(isinstance(self.detect_every, int) and self.detect_every >= 1, InvalidInputError,
               "detect_every", "an integer >= 1", self.detect_every)
        expect(0.0 <= self.min_iou <= 1.0, InvalidInputError, "min_iou", "in [0, 1]", self.min_iou)
        expect(self.max_center_shift >= 0, InvalidInputError, "max_center_shift", ">= 0", self.max_center_shift)
        expect(self.reacquire_after >= 0, InvalidInputError, "reacquire_after", ">= 0", self.reacquire_after)
        if self.target_box is not None:
            b = self.target_box
            expect(len(b) == 4 and b[2] > b[0] and b[3] > b[1], InvalidInputError, "target_box",
                   "(x1, y1, x2, y2) with x2 > x1, y2 > y1", b)


@dataclass(frozen=True)
class FrameResult:
    index: int
    observation: FaceObservation | None
    how: str  # "detected" | "tracked" | "interpolated" | "none"
    reason: str = ""  # why there is no face


@dataclass(frozen=True)
class NoFaceRange:
    start: int
    stop: int  # exclusive
    reason: str  # of the first frame of the range

    def __str__(self) -> str:
        return f"frames {self.start}-{self.stop - 1} ({self.reason})"


@dataclass
class FaceTrack:
    """The result of a scan: one entry per frame, in order."""

    results: list[FrameResult] = field(default_factory=list)

    @property
    def no_face(self) -> list[NoFaceRange]:
        return _ranges(self.results)

    @property
    def no_face_ranges(self) -> list[tuple[int, int]]:
        return [(r.start, r.stop) for r in self.no_face]

    def landmarks3(self) -> np.ndarray:
        """[T,3,2] float32, NaN where there is no face (T = number of scanned frames, index order)."""
        out = np.full((len(self.results), 3, 2), np.nan, dtype=np.float32)
        for i, r in enumerate(self.results):
            if r.observation is not None:
                out[i] = r.observation.landmarks3
        return out


class FaceTracker:
    """Wraps a FaceSource: `update` per frame (streaming) or `scan` over a whole video (pre-scan).

    Between key frames `update` follows the target with `source.track(rgb, previous)` when the source has it
    (InsightFace: the 106-point model on the moved box, skipping SCRFD); otherwise every frame is detected.
    A source with `video_mode` (mediapipe's default) is followed on every frame, detection running only where
    the previous frame had no face or tracking is lost. All per-video state lives here, not in the source.
    Sources run model sessions that are not thread-safe: give each concurrent job its own (they are cheap).
    """

    def __init__(self, source: FaceSource, *, config: TrackerConfig | None = None, **kw) -> None:
        expect(config is None or not kw, InvalidInputError, "FaceTracker options", "config or keywords, not both",
               sorted(kw))
        self.source = source
        self.config = config or TrackerConfig(**kw)
        self.reset()

    def reset(self) -> None:
        self._target: FaceObservation | None = None
        self._last_seen = -1  # frame index of the last frame with the target
        self._last_detect = None  # frame position of the last full detection
        self._position = 0  # frames seen so far
        self._ranges = _RangeBuilder()
        self.last_result: FrameResult | None = None

    @property
    def no_face(self) -> list[NoFaceRange]:
        """No-face ranges seen so far by `update` (the open one included)."""
        return self._ranges.ranges()

    def why_no_face(self, limit: int = 3) -> str:
        """Why frames had no face, for error messages: the reasons of the no-face ranges seen so far, the most
        frames first (e.g. 'face too small: 40x52 px, expected at least 50x80 (242 frames)'); '' when none."""
        return describe_reasons(self._ranges.ranges(), limit)

    # -- streaming --------------------------------------------------------------------------------------------
    def update(self, frame_index: int, rgb: np.ndarray) -> FaceObservation | None:
        """The target face in this frame, or None (with the reason in `last_result`). Frames must come in order."""
        result = self._step(frame_index, rgb)
        self._record(result)
        if result.observation is None and self.config.strict:
            raise NoFaceError(f"no usable face in frame {frame_index}: {result.reason}")
        return result.observation

    def _step(self, frame_index: int, rgb: np.ndarray) -> FrameResult:
        follow = self._follows()
        self._position += 1
        if follow:
            tracked = self.source.track(rgb, self._target)
            if tracked is not None and self._continues(tracked):
                return self._accept(frame_index, tracked, "tracked")
        self._last_detect = self._position - 1
        return self._choose(frame_index, self.source.detect_all(frame_index, rgb))

    def _follows(self) -> bool:
        """Whether this frame follows the target with `source.track` instead of detecting.

        A video-mode source (mediapipe's tracking graph) follows the previous frame's face on every frame and
        detects only when that frame had none; other sources track only between key frames (`detect_every`)."""
        if self._target is None or not hasattr(self.source, "track"):
            return False
        if getattr(self.source, "video_mode", False):
            return self.last_result is not None and self.last_result.observation is not None
        return self._last_detect is not None and self._position - self._last_detect < self.config.detect_every

    def _record(self, result: FrameResult) -> None:
        self.last_result = result
        self._ranges.add(result)

    # -- whole video ------------------------------------------------------------------------------------------
    def scan(self, frames: Iterable) -> FaceTrack:
        """Track every frame ((index, rgb) pairs or objects with .index/.rgb). Detection runs on every
        `detect_every`-th frame; frames in between are interpolated when both ends hold the same face, else
        detected. Raises NoFaceError when no frame has a face, or (strict) listing every no-face range."""
        self.reset()
        track, pending = FaceTrack(), []  # pending: (index, rgb) since the last key frame
        every = self.config.detect_every
        video = getattr(self.source, "video_mode", False)
        for n, frame in enumerate(frames):
            index, rgb = (frame.index, frame.rgb) if hasattr(frame, "rgb") else frame
            if video:  # tracking is cheaper than detection: every frame follows the last one
                self._scan_append(track, self._step(index, rgb))
                continue
            if every == 1:
                self._scan_append(track, self._choose(index, self.source.detect_all(index, rgb)))
                continue
            if n % every:
                pending.append((index, rgb))
                continue
            faces = self.source.detect_all(index, rgb)
            previous = self._target if track.results and track.results[-1].observation is not None else None
            match = self._match(faces, previous) if previous is not None else None
            if previous is not None and match is not None:
                for j, (i, _) in enumerate(pending, start=1):
                    self._scan_append(track, self._accept(i, _lerp(previous, match, j / (len(pending) + 1)),
                                                          "interpolated"))
            else:
                for i, prgb in pending:
                    self._scan_append(track, self._choose(i, self.source.detect_all(i, prgb)))
            pending = []
            self._scan_append(track, self._choose(index, faces))
        for i, prgb in pending:
            self._scan_append(track, self._choose(i, self.source.detect_all(i, prgb)))
        self._check_scan(track)
        return track

    def _scan_append(self, track: FaceTrack, result: FrameResult) -> None:
        if result.observation is not None and result.observation.landmarks is not None:
            o = result.observation  # keep the scan small: drop the full landmark set
            result = FrameResult(result.index, FaceObservation(o.landmarks3, o.box, o.score), result.how)
        track.results.append(result)
        self._record(result)

    def _check_scan(self, track: FaceTrack) -> None:
        ranges = track.no_face
        if not track.results:
            raise NoFaceError("face scan: expected at least one frame, found none")
        if all(r.observation is None for r in track.results):
            raise NoFaceError(f"no usable face in any of the {len(track.results)} frames "
                              f"({describe_reasons(ranges, 5)})")
        if ranges and self.config.strict:
            listed = ", ".join(str(r) for r in ranges[:MAX_LISTED_RANGES])
            more = f" and {len(ranges) - MAX_LISTED_RANGES} more" if len(ranges) > MAX_LISTED_RANGES else ""
            raise NoFaceError(f"no usable face in {len(ranges)} range(s): {listed}{more}")
        if ranges:
            log.info("no face in %d frame range(s): %s", len(ranges), ", ".join(map(str, ranges[:MAX_LISTED_RANGES])))

    # -- choosing the target ----------------------------------------------------------------------------------
    def _choose(self, frame_index: int, faces: FrameFaces) -> FrameResult:
        if not faces.faces:
            return FrameResult(frame_index, None, "none", faces.no_face_reason())
        if getattr(self.source, "authoritative", False):
            return self._accept(frame_index, faces.chosen(), "detected")
        if self._target is None:
            chosen = self._initial(faces)
            if chosen is None:
                return FrameResult(frame_index, None, "none", f"no face at the target box {self.config.target_box}")
            return self._accept(frame_index, chosen, "detected")
        chosen = self._match(faces, self._target)
        if chosen is None and frame_index - self._last_seen > self.config.reacquire_after:
            chosen = _nearest(faces.faces, self._target)  # the target is gone for good: follow the closest face
        if chosen is None:
            return FrameResult(frame_index, None, "none",
                               f"target face not found ({len(faces.faces)} other face(s) ignored)")
        return self._accept(frame_index, chosen, "detected")

    def _initial(self, faces: FrameFaces) -> FaceObservation | None:
        box = self.config.target_box
        if box is None:
            return faces.chosen()
        best = max(faces.faces, key=lambda f: box_iou(f.box, box))
        if box_iou(best.box, box) > 0:
            return best
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        inside = [f for f in faces.faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
        return inside[0] if inside else None

    def _match(self, faces: FrameFaces, target: FaceObservation) -> FaceObservation | None:
        if not faces.faces:
            return None
        best = max(faces.faces, key=lambda f: box_iou(f.box, target.box))
        if box_iou(best.box, target.box) >= self.config.min_iou:
            return best
        nearest = _nearest(faces.faces, target)
        return nearest if self._continues(nearest, target) else None

    def _continues(self, face: FaceObservation, target: FaceObservation | None = None) -> bool:
        target = target or self._target
        if box_iou(face.box, target.box) >= self.config.min_iou:
            return True
        return _distance(face, target) <= self.config.max_center_shift * target.size

    def _accept(self, frame_index: int, face: FaceObservation, how: str) -> FrameResult:
        self._target, self._last_seen = face, frame_index
        return FrameResult(frame_index, face, how)


def describe_reasons(ranges: list[NoFaceRange], limit: int = 3) -> str:
    """'reason (N frames); ...' over no-face ranges, the most frames first, at most `limit` reasons."""
    frames: dict[str, int] = {}
    for r in ranges:
        frames[r.reason] = frames.get(r.reason, 0) + r.stop - r.start
    ranked = sorted(frames.items(), key=lambda kv: -kv[1])
    text = "; ".join(f"{reason} ({n} frame{'s' if n != 1 else ''})" for reason, n in ranked[:limit])
    return text + (f"; {len(ranked) - limit} other reason(s)" if len(ranked) > limit else "")


def _distance(a: FaceObservation, b: FaceObservation) -> float:
    (ax, ay), (bx, by) = a.center, b.center
    return float(np.hypot(ax - bx, ay - by))


def _nearest(faces, target: FaceObservation) -> FaceObservation:
    return min(faces, key=lambda f: _distance(f, target))


def _lerp(a: FaceObservation, b: FaceObservation, t: float) -> FaceObservation:
    """Linear blend of two observations of the same face; points rounded to whole pixels like detected ones."""
    points = np.round((1 - t) * a.landmarks3.astype(np.float64) + t * b.landmarks3).astype(np.float32)
    box = tuple(float((1 - t) * p + t * q) for p, q in zip(a.box, b.box))
    return FaceObservation(points, box, min(a.score, b.score))


class _RangeBuilder:
    """Folds per-frame results into no-face ranges as they come."""

    def __init__(self) -> None:
        self.closed: list[NoFaceRange] = []
        self.open: list | None = None  # [start, stop, reason]

    def add(self, result: FrameResult) -> None:
        if result.observation is None:
            if self.open is None:
                self.open = [result.index, result.index + 1, result.reason]
            else:
                self.open[1] = result.index + 1
        elif self.open is not None:
            self.closed.append(NoFaceRange(*self.open))
            self.open = None

    def ranges(self) -> list[NoFaceRange]:
        return self.closed + ([NoFaceRange(*self.open)] if self.open else [])


def _ranges(results: list[FrameResult]) -> list[NoFaceRange]:
    builder = _RangeBuilder()
    for r in results:
        builder.add(r)
    return builder.ranges()
