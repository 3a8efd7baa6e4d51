"""What every landmark source returns: candidate faces, the official filter and the three alignment points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from engine.errors import InvalidInputError, expect

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels

# The official 106-point groups (spec §5.3) and the mediapipe FaceMesh groups standing in for them
# (golden/e2e_demo1/README.md "landmarks3"): image-left brow, image-right brow, nose.
INSIGHTFACE_106_GROUPS = ((43, 48, 49, 51, 50), (101, 102, 103, 104, 105), (74, 77, 83, 86))
FACEMESH_468_GROUPS = ((70, 63, 105, 66, 107), (336, 296, 334, 293, 300), (1, 4, 5, 195))


@dataclass(frozen=True)
class FaceThresholds:
    """The official candidate filter (spec §5.2); a face failing it counts as no face, with a reason."""

    min_width: int = 50  # px, on the integer box
    min_height: int = 80  # px
    min_aspect: float = 0.2  # w / h
    max_aspect: float = 1.5
    min_score: float = 0.5

    def __post_init__(self) -> None:
        expect(self.min_width >= 0 and self.min_height >= 0, InvalidInputError, "face min size", ">= 0",
               (self.min_width, self.min_height))
        expect(0 <= self.min_aspect < self.max_aspect, InvalidInputError, "face aspect range",
               "0 <= min < max", (self.min_aspect, self.max_aspect))

    def rejection(self, box: Box, score: float) -> str | None:
        """Why the official filter drops this face (None when it passes). Uses the box as ints, like the official."""
        x1, y1, x2, y2 = (int(v) for v in box)
        w, h = x2 - x1, y2 - y1
        if w < self.min_width or h < self.min_height:
            return f"face too small: {w}x{h} px, expected at least {self.min_width}x{self.min_height}"
        if h <= 0 or not self.min_aspect <= w / h <= self.max_aspect:
            ratio = "inf" if h <= 0 else f"{w / h:.2f}"
            return f"face box aspect w/h {ratio} outside [{self.min_aspect}, {self.max_aspect}] (profile or partial face)"
        if score < self.min_score:
            return f"face score {score:.2f} below {self.min_score}"
        return None


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """One face in one frame."""

    landmarks3: np.ndarray  # [3,2] float32, whole pixels: brow left, brow right, nose (np.round-ed as the official)
    box: Box  # clamped to the frame
    score: float
    landmarks: np.ndarray | None = field(default=None, repr=False)  # [K,2] float32 all points of the source, if any

    @property
    def size(self) -> float:
        """sqrt of the box area, in px (a scale for distances)."""
        x1, y1, x2, y2 = self.box
        return float(np.sqrt(max(x2 - x1, 1.0) * max(y2 - y1, 1.0)))

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


@dataclass(frozen=True, eq=False)
class Rejected:
    """A face the detector saw but the thresholds refused."""

    box: Box
    score: float
    reason: str


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """Every candidate of one frame: usable faces (passing the thresholds) and refused ones."""

    faces: tuple[FaceObservation, ...] = ()
    rejected: tuple[Rejected, ...] = ()

    def chosen(self) -> FaceObservation | None:
        """The official choice: the usable face with the largest box area."""
        if not self.faces:
            return None
        return max(self.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def no_face_reason(self) -> str:
        if self.faces:
            return ""
        if not self.rejected:
            return "no face detected"
        return "; ".join(r.reason for r in self.rejected)


@runtime_checkable
class FaceSource(Protocol):
    """Finds faces in RGB frames. `detect` gives the official choice, `detect_all` every candidate."""

    name: str

    def detect(self, frame_index: int, rgb: np.ndarray) -> FaceObservation | None: ...

    def detect_all(self, frame_index: int, rgb: np.ndarray) -> FrameFaces: ...


def check_frame(rgb: np.ndarray) -> tuple[int, int]:
    """Validate an RGB uint8 frame [H,W,3]; return (W, H)."""
    expect(isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8,
           InvalidInputError, "frame", "uint8 RGB array [H,W,3]",
           f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    expect(rgb.shape[0] > 0 and rgb.shape[1] > 0, InvalidInputError, "frame size", "non-empty", rgb.shape)
    return rgb.shape[1], rgb.shape[0]


def clamp_box(box, width: int, height: int) -> Box:
    """Clamp a box to the frame, so crops never index outside it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return (x1, y1, max(x1, x2), max(y1, y2))


def three_points(points: np.ndarray, groups) -> np.ndarray:
    """Official alignment points: round the landmarks to int pixels, mean each group, np.round. -> [3,2] float32."""
    pts = np.round(np.asarray(points, dtype=np.float64)[:, :2]).astype(np.int64)  # [K,2]
    return np.round(np.stack([pts[list(g)].mean(axis=0) for g in groups])).astype(np.float32)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


OUT_OF_FRAME_NOTE_BELOW = 0.9  # a refused face with less of its box inside the frame is said to be partly out of it


def visible_fraction(box, width: int, height: int) -> float:
    """Share of the (unclamped) box's area that lies inside the frame, 0..1."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    cx1, cy1, cx2, cy2 = clamp_box(box, width, height)
    return (cx2 - cx1) * (cy2 - cy1) / area


def with_frame_note(reason: str, box, width: int, height: int) -> str:
    """`reason`, plus how much of the face is out of frame when that is likely part of why it was refused."""
    visible = visible_fraction(box, width, height)
    if visible >= OUT_OF_FRAME_NOTE_BELOW:
        return reason
    return f"{reason}; face partly out of frame ({100 * visible:.0f} % of its box inside)"


def low_score_rejection(box, score: float, threshold: float, width: int, height: int) -> Rejected:
    """The best candidate the detector itself dropped (score below its threshold): why a frame has no face."""
    reason = with_frame_note(f"face score {score:.2f} below the detector's {threshold}", box, width, height)
    return Rejected(clamp_box(box, width, height), float(score), reason)


def split_candidates(candidates, thresholds: FaceThresholds, width: int, height: int, make) -> FrameFaces:
    """Apply the thresholds to raw (box, score, payload) candidates; `make(box, score, payload)` builds the kept faces."""
    faces, rejected = [], []
    for box, score, payload in candidates:
        reason = thresholds.rejection(box, score)
        if reason is None:
            faces.append(make(clamp_box(box, width, height), float(score), payload))
        else:
            reason = with_frame_note(reason, box, width, height)
            rejected.append(Rejected(clamp_box(box, width, height), float(score), reason))
    return FrameFaces(tuple(faces), tuple(rejected))
