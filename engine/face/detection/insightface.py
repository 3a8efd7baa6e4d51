"""The official detector: InsightFace SCRFD (det_10g) + 2d106det run by onnxruntime, our own pre/post-processing.

Follows InsightFace 0.7.3 `FaceAnalysis(allowed_modules=[detection, landmark_2d_106]).prepare(det_size=(512,512))`
as LatentSync calls it (spec §5.2): frames are passed as RGB where InsightFace expects BGR, and that swap is kept.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from engine.errors import CheckpointError
from engine.face.detection import models
from engine.face.detection.base import (
    INSIGHTFACE_106_GROUPS,
    Box,
    FaceObservation,
    FaceThresholds,
    FrameFaces,
    check_frame,
    clamp_box,
    low_score_rejection,
    split_candidates,
    three_points,
)

log = logging.getLogger(__name__)

DET_SIZE = (512, 512)  # (w, h): LatentSync's prepare(det_size=...)
DET_THRESHOLD = 0.5
LOW_SCORE_NOTE = 0.1  # a frame without faces names its best candidate scoring at least this ("low score")
NMS_THRESHOLD = 0.4
DET_MEAN, DET_STD = 127.5, 128.0
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
LANDMARK_SIZE = 192  # px, 2d106det input
LANDMARK_CROP_SCALE = 1.5  # crop side = 1.5 * max(box w, h)
NUM_LANDMARKS = 106


def letterbox(image: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """SCRFD resize keeping aspect into the top-left of a zero canvas -> (canvas [h,w,3] uint8, scale)."""
    im_ratio = image.shape[0] / image.shape[1]
    if im_ratio > size[1] / size[0]:
        new_h, new_w = size[1], int(size[1] / im_ratio)
    else:
        new_w, new_h = size[0], int(size[0] * im_ratio)
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(np.ascontiguousarray(image), (new_w, new_h))
    return canvas, new_h / image.shape[0]


def to_blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """cv2.dnn.blobFromImage(image, 1/std, mean, swapRB=True): [1,3,h,w] float32 with channels reversed."""
    return ((image[:, :, ::-1].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()


def anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    """[h*w*2,2] (x, y) of every anchor, row-major over cells, 2 anchors per cell."""
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, ANCHORS_PER_CELL, axis=0)


def decode_scrfd(outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float = DET_THRESHOLD):
    """9 SCRFD outputs (scores, boxes, keypoints per stride) -> (boxes [n,4], scores [n], kps [n,5,2]) in input px."""
    fmc = len(STRIDES)
    boxes, scores, kpss = [], [], []
    for i, stride in enumerate(STRIDES):
        score = outputs[i].reshape(-1)
        dist = outputs[i + fmc].reshape(-1, 4) * stride
        kdist = outputs[i + 2 * fmc].reshape(-1, 10) * stride
        centres = anchor_centres(input_hw[0] // stride, input_hw[1] // stride, stride)
        expect_rows = len(centres)
        if len(score) != expect_rows:
            raise CheckpointError(f"SCRFD stride {stride} output: expected {expect_rows} rows, found {len(score)}")
        keep = np.where(score >= threshold)[0]
        c, d = centres[keep], dist[keep]
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        scores.append(score[keep])
        kpss.append((np.tile(c, 5) + kdist[keep]).reshape(-1, 5, 2))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kpss)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """InsightFace's greedy NMS (areas with the +1 pixel convention)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= threshold)[0] + 1]
    return keep


def landmark_crop_matrix(box: Box) -> np.ndarray:
    """[2,3] similarity from the frame to the 192x192 landmark input (centre of box, scale 192/(1.5*max side))."""
    x1, y1, x2, y2 = box
    scale = LANDMARK_SIZE / (max(x2 - x1, y2 - y1) * LANDMARK_CROP_SCALE)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = LANDMARK_SIZE / 2
    return np.array([[scale, 0.0, half - cx * scale], [0.0, scale, half - cy * scale]], dtype=np.float64)


def decode_landmarks(pred: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """2d106det output (212 values in [-1,1] of the crop) -> [106,2] frame pixels through the inverse crop warp."""
    pts = pred.reshape(-1, 2)[-NUM_LANDMARKS:].astype(np.float64)
    pts = (pts + 1) * (LANDMARK_SIZE // 2)
    inverse = cv2.invertAffineTransform(matrix)
    return pts @ inverse[:, :2].T + inverse[:, 2]


def mean_std_of(model_path: str | Path) -> tuple[float, float]:
    """InsightFace's rule: models converted from mxnet normalise inside (Sub/Mul in the first nodes) -> (0, 1)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    find_sub = find_mul = False
    for i, node in enumerate(graph.node[:8]):
        find_sub |= node.name.startswith(("Sub", "_minus"))
        find_mul |= node.name.startswith(("Mul", "_mul"))
        if i < 3 and node.name == "bn_data":
            find_sub = find_mul = True
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 128.0)


class InsightFaceSource:
    """`FaceSource` over SCRFD det_10g + 2d106det (official buffalo_l files, fetched and hash-checked on first use)."""

    name = "insightface"

    def __init__(self, *, detector_path: str | Path | None = None, landmark_path: str | Path | None = None,
                 thresholds: FaceThresholds = FaceThresholds(), det_size: tuple[int, int] = DET_SIZE,
                 providers: list[str] | None = None, offline: bool = False) -> None:
        from engine.extras import import_optional

        ort = import_optional("onnxruntime", "cpu", what="insightface face source")
        detector_path = detector_path or models.ensure(models.INSIGHTFACE_DETECTOR, models.INSIGHTFACE_PACK,
                                                       offline=offline)
        landmark_path = landmark_path or models.ensure(models.INSIGHTFACE_LANDMARK, models.INSIGHTFACE_PACK,
                                                       offline=offline)
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                  if p in ort.get_available_providers()]
        self.thresholds = thresholds
        self._det = ort.InferenceSession(str(detector_path), providers=providers)
        self._lmk = ort.InferenceSession(str(landmark_path), providers=providers)
        self._lmk_mean_std = mean_std_of(landmark_path)
        self.det_size = self._fixed_size(self._det) or tuple(det_size)
        outputs = self._det.get_outputs()
        if len(outputs) != 3 * len(STRIDES):
            raise CheckpointError(f"{detector_path}: expected an SCRFD model with 9 outputs "
                                  f"(scores, boxes, keypoints x 3 strides), found {len(outputs)}")
        self._det_outputs = [o.name for o in outputs]

    @staticmethod
    def _fixed_size(session) -> tuple[int, int] | None:
        shape = session.get_inputs()[0].shape  # [1,3,h,w]
        if all(isinstance(v, int) for v in shape[2:4]):
            log.warning("SCRFD model has a fixed input %s; det_size is ignored", shape)
            return int(shape[3]), int(shape[2])
        return None

    # -- FaceSource -------------------------------------------------------------------------------------------
    def detect(self, frame_index: int, rgb: np.ndarray) -> FaceObservation | None:
        return self.detect_all(frame_index, rgb).chosen()

    def detect_all(self, frame_index: int, rgb: np.ndarray) -> FrameFaces:
        width, height = check_frame(rgb)
        outputs = self._scrfd(rgb)
        boxes, scores, _ = self._decode(*outputs)
        candidates = [(tuple(float(v) for v in b), float(s), b) for b, s in zip(boxes, scores)]
        faces = split_candidates(candidates, self.thresholds, width, height, partial(self._observation, rgb))
        if not candidates:  # say "low score" rather than "no face" when SCRFD saw something
            low_boxes, low_scores, _ = self._decode(*outputs, threshold=LOW_SCORE_NOTE)
            if len(low_scores):
                best = tuple(float(v) for v in low_boxes[0])
                return FrameFaces((), (low_score_rejection(best, float(low_scores[0]), DET_THRESHOLD, width, height),))
        return faces

    def landmarks_in_box(self, rgb: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> FaceObservation | None:
        """The 106 landmarks for a given face box (the official landmark step, no detection, no thresholds).

        With the previous frame's `landmarks`, the box follows their mean motion (tracking between detections).
        """
        width, height = check_frame(rgb)
        observation = self._observation(rgb, clamp_box(box, width, height), 1.0, box)
        if landmarks is None or len(landmarks) != NUM_LANDMARKS:
            return observation
        dx, dy = (observation.landmarks.mean(axis=0) - np.asarray(landmarks).mean(axis=0)).tolist()
        moved = clamp_box((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), width, height)
        return FaceObservation(observation.landmarks3, moved, observation.score, observation.landmarks)

    def track(self, rgb: np.ndarray, previous: FaceObservation) -> FaceObservation | None:
        """The same face in the next frame without running SCRFD: landmarks in the previous box, moved with them."""
        return self.landmarks_in_box(rgb, previous.box, previous.landmarks)

    # -- stages -----------------------------------------------------------------------------------------------
    def detect_boxes(self, rgb: np.ndarray):
        """SCRFD -> (boxes [n,4] frame px, scores [n], keypoints [n,5,2]) after NMS, best first."""
        return self._decode(*self._scrfd(rgb))

    def _scrfd(self, rgb: np.ndarray) -> tuple[list[np.ndarray], tuple[int, int], float]:
        """(the 9 SCRFD outputs, input (h, w), letterbox scale)."""
        canvas, scale = letterbox(rgb, self.det_size)
        blob = to_blob(canvas, DET_MEAN, DET_STD)
        return self._det.run(self._det_outputs, {self._det.get_inputs()[0].name: blob}), blob.shape[2:4], scale

    @staticmethod
    def _decode(outputs, input_hw, scale: float, threshold: float = DET_THRESHOLD):
        boxes, scores, kps = decode_scrfd(outputs, input_hw, threshold)
        order = scores.argsort()[::-1]
        boxes = (boxes[order] / scale).astype(np.float32)  # InsightFace keeps float32 detections
        scores, kps = scores[order].astype(np.float32), (kps[order] / scale).astype(np.float32)
        keep = nms(boxes, scores)
        return boxes[keep], scores[keep], kps[keep]

    def landmarks106(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """2d106det on the crop around `box` -> [106,2] frame pixels."""
        matrix = landmark_crop_matrix(box)
        crop = cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (LANDMARK_SIZE, LANDMARK_SIZE), borderValue=0.0)
        blob = to_blob(crop, *self._lmk_mean_std)
        pred = self._lmk.run(None, {self._lmk.get_inputs()[0].name: blob})[0][0]
        return decode_landmarks(pred, matrix)

    def _observation(self, rgb: np.ndarray, box: Box, score: float, raw_box) -> FaceObservation:
        points = self.landmarks106(rgb, tuple(raw_box))  # the official crops around the unclamped box
        return FaceObservation(three_points(points, INSIGHTFACE_106_GROUPS), box, score, points.astype(np.float32))
