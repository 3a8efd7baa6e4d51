"""Offline default face source: mediapipe's BlazeFace + 468-point FaceMesh TFLite models, our own pre/post-processing.

Reproduces mediapipe 0.10.21 `FaceMesh` on CPU: the short-range detector on the letterboxed frame (128x128,
[-1,1], zero border), weighted NMS, the ROI from the detection box rotated by the eye keypoints and scaled 1.5
(square on the long side), the mesh on that ROI (192x192, [0,1], replicated border) and the projection of its
points back to the frame. Only `ai_edge_litert` is needed, not mediapipe itself.

Two modes, as mediapipe has (`static_image_mode`):
- `video` (default): mediapipe's tracking graph. The mesh of frame t runs on the ROI made from frame t-1's 468
  landmarks (their bounding box, rotated by the eye corners 33 -> 263, scaled 1.5); the detector runs only when
  there is no previous face or the mesh's face-presence flag drops (tracking lost). Per-frame detection is what
  makes the track jump: BlazeFace's box and eye keypoints are coarse, so the ROI, and with it the mesh, wobbles.
  One deliberate difference: where tracking is lost mediapipe reports no face for that frame and detects on the
  next; here the detector runs on the same frame at once.
- `static`: mediapipe's `static_image_mode=True`, detection on every frame (`--face mediapipe-static`).

The source object holds only its two interpreters (cheap: ~10 ms to create); the per-frame state of video mode
(the previous landmarks) lives in the `FaceTracker` that calls `track()`, so one source per job is all it takes.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.errors import InvalidInputError, expect
from engine.face.detection import models
from engine.face.detection.base import (
    FACEMESH_468_GROUPS,
    Box,
    FaceObservation,
    FaceThresholds,
    FrameFaces,
    Rejected,
    check_frame,
    clamp_box,
    low_score_rejection,
    split_candidates,
    three_points,
    with_frame_note,
)

DETECTOR_SIZE = 128  # px, BlazeFace short-range input
MESH_SIZE = 192  # px, FaceMesh input
NUM_MESH_POINTS = 468
ANCHOR_STRIDES = (8, 16, 16, 16)  # SsdAnchorsCalculator: 4 layers; equal strides share one feature map
ANCHORS_PER_LAYER = 2  # aspect ratio 1.0 + the interpolated scale
NUM_COORDS = 16  # box (cx, cy, w, h) + 6 keypoints (x, y)
SCORE_CLIP = 100.0
MIN_DETECTION_SCORE = 0.5
LOW_SCORE_NOTE = 0.1  # a frame without faces names its best candidate scoring at least this ("low score")
NMS_MIN_IOU = 0.3  # weighted NMS merges boxes overlapping more than this
ROI_SCALE = 1.5
MIN_PRESENCE = 0.5  # FaceMesh face-presence threshold (sigmoid of the flag output)
EYE_KEYPOINTS = (0, 1)  # BlazeFace: subject's right eye, left eye -> ROI rotation
MESH_EYE_POINTS = (33, 263)  # FaceMesh eye corners -> ROI rotation when re-cropping from landmarks
BOX_SEARCH_SCALE = 2.0  # BlazeFace looks for the face of a given box in a square this many box sizes wide
MODES = ("video", "static")  # mediapipe static_image_mode False / True


@dataclass(frozen=True)
class Roi:
    """A rotated square region of the frame, in pixels (mediapipe NormalizedRect times the frame size)."""

    cx: float
    cy: float
    width: float
    height: float
    rotation: float  # radians, clockwise on screen

    def tensor_to_image(self, size: int) -> np.ndarray:
        """[2,3] affine from tensor pixels (0..size) to frame pixels, as mediapipe's ImageToTensor corner mapping."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        sx, sy = self.width / size, self.height / size
        return np.array(
            [[c * sx, -s * sy, self.cx - c * self.width / 2 + s * self.height / 2],
             [s * sx, c * sy, self.cy - s * self.width / 2 - c * self.height / 2]], dtype=np.float64)


def ssd_anchors() -> np.ndarray:
    """[896,2] anchor centres (x, y) in [0,1]; fixed anchor size 1 (SsdAnchorsCalculator of BlazeFace short range)."""
    centres, layer = [], 0
    while layer < len(ANCHOR_STRIDES):
        stride, last = ANCHOR_STRIDES[layer], layer
        while last < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[last] == stride:
            last += 1
        per_cell = ANCHORS_PER_LAYER * (last - layer)
        cells = math.ceil(DETECTOR_SIZE / stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)  # [cells^2,1,2]
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
        layer = last
    return np.concatenate(centres).astype(np.float32)


def decode_detections(raw: np.ndarray, logits: np.ndarray, anchors: np.ndarray, min_score: float = MIN_DETECTION_SCORE):
    """raw [896,16], logits [896] -> (boxes [n,4] xmin,ymin,xmax,ymax, keypoints [n,6,2], scores [n]) in [0,1]."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
    keep = scores >= min_score
    raw, anchors, scores = raw[keep] / DETECTOR_SIZE, anchors[keep], scores[keep]
    cx, cy = raw[:, 0] + anchors[:, 0], raw[:, 1] + anchors[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keypoints = raw[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
    return boxes, keypoints, scores


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float = NMS_MIN_IOU):
    """mediapipe WEIGHTED non-max suppression: each kept box is the score-weighted mean of its overlapping group."""
    order = list(np.argsort(-scores, kind="stable"))
    out = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        top = order[0]
        ix = np.clip(np.minimum(boxes[order, 2], boxes[top, 2]) - np.maximum(boxes[order, 0], boxes[top, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[order, 3], boxes[top, 3]) - np.maximum(boxes[order, 1], boxes[top, 1]), 0, None)
        inter = ix * iy
        overlap = inter / np.maximum(area[order] + area[top] - inter, 1e-12)
        group = [o for o, v in zip(order, overlap) if v > iou] or [top]
        weights = scores[group][:, None]
        total = weights.sum()
        out.append(((boxes[group] * weights).sum(0) / total,
                    (keypoints[group] * weights[:, :, None]).sum(0) / total, float(scores[top])))
        order = [o for o, v in zip(order, overlap) if not v > iou and o != top]
    return out


def roi_from_box(box: Box, keypoints: np.ndarray | None) -> Roi:
    """DetectionsToRects (+ rotation from two keypoints, pixels) then RectTransformation(scale 1.5, square_long)."""
    x1, y1, x2, y2 = box
    rotation = 0.0
    if keypoints is not None:
        (ax, ay), (bx, by) = keypoints
        rotation = _normalize_radians(-math.atan2(-(by - ay), bx - ax))
    side = max(x2 - x1, y2 - y1) * ROI_SCALE
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, side, side, rotation)


def roi_from_landmarks(points: np.ndarray) -> Roi:
    """FaceLandmarkLandmarksToRoi: the box of all 468 points, rotated by the eye corners 33 -> 263, scaled 1.5."""
    return roi_from_box(_points_box(points), points[list(MESH_EYE_POINTS)])


def _normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


class MediapipeFaceSource:
    """`FaceSource` over the two mediapipe TFLite models (run by ai_edge_litert); `mode` video (default) | static."""

    def __init__(self, *, detector_path: str | Path | None = None, mesh_path: str | Path | None = None,
                 thresholds: FaceThresholds = FaceThresholds(), num_threads: int | None = None,
                 offline: bool = False, mode: str = "video") -> None:
        expect(mode in MODES, InvalidInputError, "mediapipe face mode", MODES, mode)
        self.mode = mode
        self.name = "mediapipe" if mode == "video" else "mediapipe-static"
        from engine.extras import require

        require("face", what="the mediapipe face source")
        from ai_edge_litert.interpreter import Interpreter
        detector_path = detector_path or models.ensure(models.MEDIAPIPE_DETECTOR, models.MEDIAPIPE_WHEEL, offline=offline)
        mesh_path = mesh_path or models.ensure(models.MEDIAPIPE_MESH, models.MEDIAPIPE_WHEEL, offline=offline)
        self.thresholds = thresholds
        self._detector = _Model(Interpreter, detector_path, num_threads)
        self._mesh = _Model(Interpreter, mesh_path, num_threads)
        self._anchors = ssd_anchors()

    @property
    def video_mode(self) -> bool:
        """True: the tracker follows the face with `track()` on every frame and detects only when it is lost."""
        return self.mode == "video"

    # -- FaceSource -------------------------------------------------------------------------------------------
    def detect(self, frame_index: int, rgb: np.ndarray) -> FaceObservation | None:
        return self.detect_all(frame_index, rgb).chosen()

    def track(self, rgb: np.ndarray, previous: FaceObservation) -> FaceObservation | None:
        """The face of `previous` (the last frame's observation, with its 468 points) in this frame, mediapipe's
        video mode: the mesh on the ROI from those points. None when tracking is lost: no previous mesh, the
        face-presence flag below 0.5, or a face the thresholds refuse (then detection runs and says why)."""
        points = previous.landmarks
        if points is None or len(points) != NUM_MESH_POINTS:
            return None
        width, height = check_frame(rgb)
        mesh, presence = self.mesh_and_presence(rgb, roi_from_landmarks(np.asarray(points, np.float64)))
        if mesh is None:
            return None
        box = _points_box(mesh)
        if self.thresholds.rejection(box, presence) is not None:
            return None
        return self._observation(clamp_box(box, width, height), presence, mesh)

    def detect_all(self, frame_index: int, rgb: np.ndarray) -> FrameFaces:
        width, height = check_frame(rgb)
        candidates, absent = [], []
        detections, dropped = self._detect(rgb)
        for box, keypoints, score in detections:
            mesh = self.mesh(rgb, roi_from_box(box, keypoints[list(EYE_KEYPOINTS)]))
            if mesh is None:
                reason = with_frame_note("face mesh found no face in the detected box", box, width, height)
                absent.append(Rejected(clamp_box(box, width, height), score, reason))
            else:
                candidates.append((_points_box(mesh), score, mesh))
        faces = split_candidates(candidates, self.thresholds, width, height, self._observation)
        if not detections and dropped is not None:  # say "low score" rather than "no face" when BlazeFace knows
            absent.append(low_score_rejection(dropped[0], dropped[1], MIN_DETECTION_SCORE, width, height))
        return FrameFaces(faces.faces, faces.rejected + tuple(absent))

    def landmarks_in_box(self, rgb: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> FaceObservation | None:
        """The mesh of the face in a given box, no thresholds; None without a face there.

        The mesh is sensitive to its ROI (10 % more scale moves the points ~10 px on a 300 px face), so the ROI is
        built as after detection: from the full-frame BlazeFace face whose centre lies in the box, else from
        BlazeFace on a square twice the box size, else from the box (and the previous mesh when given).
        """
        width, height = check_frame(rgb)
        x1, y1, x2, y2 = box
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, BOX_SEARCH_SCALE * max(x2 - x1, y2 - y1)
        detections = [d for d in self.detect_boxes(rgb) if _centre_in(d[0], box)]
        detections = detections or self.detect_boxes(rgb, Roi(cx, cy, side, side, 0.0))
        if detections:
            b, k, _ = min(detections, key=lambda d: math.dist(((d[0][0] + d[0][2]) / 2, (d[0][1] + d[0][3]) / 2),
                                                              (cx, cy)))
            mesh = self.mesh(rgb, roi_from_box(b, k[list(EYE_KEYPOINTS)]))
        else:
            if landmarks is None or len(landmarks) != NUM_MESH_POINTS:
                landmarks = self.mesh(rgb, roi_from_box(box, None))
                if landmarks is None:
                    return None
            mesh = self.mesh(rgb, roi_from_landmarks(landmarks))
        if mesh is None:
            return None
        return self._observation(clamp_box(_points_box(mesh), width, height), 1.0, mesh)

    # -- stages -----------------------------------------------------------------------------------------------
    def detect_boxes(self, rgb: np.ndarray, roi: Roi | None = None) -> list[tuple[Box, np.ndarray, float]]:
        """BlazeFace on the letterboxed frame (or a square ROI) -> [(box px, keypoints [6,2] px, score)], NMS-ed."""
        return self._detect(rgb, roi)[0]

    def _detect(self, rgb: np.ndarray, roi: Roi | None = None):
        """(detect_boxes' list, (box px, score) of the best candidate below the detector's threshold or None)."""
        if roi is None:
            height, width = rgb.shape[:2]
            side = float(max(width, height))  # ImageToTensor keep_aspect_ratio: pad the ROI to a square
            roi = Roi(width / 2, height / 2, side, side, 0.0)
        tensor = _warp(rgb, roi, DETECTOR_SIZE, cv2.BORDER_CONSTANT) * (2.0 / 255.0) - 1.0
        outputs = self._detector.run(tensor)  # regressors [1,896,16], classificators [1,896,1]
        raw = next(o for o in outputs if o.shape[-1] == NUM_COORDS)
        logits = next(o for o in outputs if o.shape[-1] == 1)
        boxes, keypoints, scores = decode_detections(raw.reshape(-1, NUM_COORDS), logits.reshape(-1), self._anchors)
        m = roi.tensor_to_image(1)

        def to_frame(b) -> Box:
            corners = np.array([[b[0], b[1]], [b[2], b[3]]]) @ m[:, :2].T + m[:, 2]
            return tuple(float(v) for v in corners.reshape(-1))

        out = [(to_frame(b), k @ m[:, :2].T + m[:, 2], s) for b, k, s in weighted_nms(boxes, keypoints, scores)]
        dropped = None
        if not out:
            low_boxes, _, low_scores = decode_detections(raw.reshape(-1, NUM_COORDS), logits.reshape(-1),
                                                         self._anchors, min_score=LOW_SCORE_NOTE)
            if len(low_scores):
                best = int(np.argmax(low_scores))
                dropped = (to_frame(low_boxes[best]), float(low_scores[best]))
        return out, dropped

    def mesh(self, rgb: np.ndarray, roi: Roi) -> np.ndarray | None:
        """FaceMesh on a rotated ROI -> [468,2] frame pixels (float), or None when the presence flag is low."""
        return self.mesh_and_presence(rgb, roi)[0]

    def mesh_and_presence(self, rgb: np.ndarray, roi: Roi) -> tuple[np.ndarray | None, float]:
        """(FaceMesh points [468,2] frame px or None when the presence is below 0.5, the presence probability)."""
        tensor = _warp(rgb, roi, MESH_SIZE, cv2.BORDER_REPLICATE) * (1.0 / 255.0)
        outputs = self._mesh.run(tensor)
        points = next(o for o in outputs if o.size == NUM_MESH_POINTS * 3).reshape(NUM_MESH_POINTS, 3)[:, :2]
        flag = next(o for o in outputs if o.size == 1).item()
        presence = 1.0 / (1.0 + math.exp(-max(min(flag, SCORE_CLIP), -SCORE_CLIP)))
        if presence < MIN_PRESENCE:
            return None, presence
        m = roi.tensor_to_image(MESH_SIZE)
        return points.astype(np.float64) @ m[:, :2].T + m[:, 2], presence

    @staticmethod
    def _observation(box: Box, score: float, mesh: np.ndarray) -> FaceObservation:
        return FaceObservation(three_points(mesh, FACEMESH_468_GROUPS), box, score, mesh.astype(np.float32))


def _centre_in(inner: Box, outer: Box) -> bool:
    x, y = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= x <= outer[2] and outer[1] <= y <= outer[3]


def _points_box(points: np.ndarray) -> Box:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def _warp(rgb: np.ndarray, roi: Roi, size: int, border: int) -> np.ndarray:
    """The ROI resampled to [1,size,size,3] float32 (bilinear, like mediapipe's OpenCV converter)."""
    m = roi.tensor_to_image(size)
    out = cv2.warpAffine(_row_strided(rgb), m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=border, borderValue=(0, 0, 0))
    return out.astype(np.float32)[None]


def _row_strided(rgb: np.ndarray) -> np.ndarray:
    """`rgb` as OpenCV can read it without a copy: a decoded frame's padded rows are fine (OpenCV has a row step),
    only pixels that are not packed (x, then channel) need the contiguous copy of the whole frame."""
    packed = rgb.ndim == 3 and rgb.strides[2] == rgb.itemsize and rgb.strides[1] == rgb.shape[2] * rgb.itemsize
    return rgb if packed and rgb.strides[0] >= rgb.shape[1] * rgb.strides[1] else np.ascontiguousarray(rgb)


class _Model:
    """One TFLite interpreter with fixed input/output order."""

    def __init__(self, interpreter_cls, path, num_threads: int | None) -> None:
        self.interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads)
        _without_tflite_notice(self.interpreter.allocate_tensors)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(tensor, dtype=np.float32))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self.outputs]


TFLITE_NOTICE = b"Created TensorFlow Lite XNNPACK delegate"  # printed by the C++ runtime, once per process
_notice_lock = threading.Lock()
_notice_seen = False


def _without_tflite_notice(allocate) -> None:
    """Run the first `allocate_tensors()` of the process with the C-level stderr captured, and pass on all of it
    except TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." line (noise on every run)."""
    global _notice_seen
    with _notice_lock:
        if _notice_seen:
            allocate()
            return
        _notice_seen = True
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                allocate()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            rest = b"".join(line for line in captured.read().splitlines(keepends=True) if TFLITE_NOTICE not in line)
        if rest:
            os.write(2, rest)
