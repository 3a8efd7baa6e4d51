"""Face crops for SyncNet with the official evaluator geometry (crop scale 0.4, pad 110, 224x224)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.errors import InvalidInputError, NoFaceError

CROP_SCALE = 0.4  # context added around the face box
PAD_VALUE = 110  # grey fill outside the frame
CROP_SIZE = 224  # output side (px)
MEDIAN_KERNEL = 13  # scipy.signal.medfilt kernel over the track
MAX_GAP = 25  # frames without a box bridged by interpolation (official num_failed_det)
MIN_TRACK = 6  # frames; one 5-frame window + 1 (the official detector wants 50)

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels


def medfilt_zero(x: np.ndarray, kernel: int = MEDIAN_KERNEL) -> np.ndarray:
    """scipy.signal.medfilt: running median with zero padding at both ends."""
    half = kernel // 2
    padded = np.pad(np.asarray(x, dtype=np.float64), half)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


@dataclass(frozen=True)
class CropTrack:
    """A contiguous run of frames [start, start+len) with smoothed crop size and centre per frame."""

    start: int
    size: np.ndarray  # [T] half box size (max of width, height) / 2
    cx: np.ndarray  # [T]
    cy: np.ndarray  # [T]

    @property
    def stop(self) -> int:
        return self.start + len(self.size)


def smooth_track(boxes: np.ndarray, start: int = 0) -> CropTrack:
    """boxes [T,4] (x1,y1,x2,y2) -> median-filtered size and centre (official crop_video)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return CropTrack(start, medfilt_zero(size), medfilt_zero(cx), medfilt_zero(cy))


def crop_face(frame_bgr: np.ndarray, size: float, cx: float, cy: float) -> np.ndarray:
    """One crop: rows [cy-s, cy+s(1+2k)), cols [cx-s(1+k), cx+s(1+k)) of the frame padded by int(s(1+2k)) px of 110.

    Equal to the official np.pad + slice, without padding the whole frame.
    """
    pad = int(size * (1 + 2 * CROP_SCALE))
    my, mx = cy + pad, cx + pad
    top, bottom = int(my - size), int(my + size * (1 + 2 * CROP_SCALE))
    left, right = int(mx - size * (1 + CROP_SCALE)), int(mx + size * (1 + CROP_SCALE))
    height, width = frame_bgr.shape[:2]
    # clamp to the padded frame like numpy slicing does
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, height + 2 * pad), min(right, width + 2 * pad)
    if bottom <= top or right <= left:
        raise InvalidInputError(
            f"face crop: expected a non-empty region, found rows {top}:{bottom} cols {left}:{right}"
        )
    out = np.full((bottom - top, right - left, 3), PAD_VALUE, dtype=np.uint8)
    src_top, src_left = max(top - pad, 0), max(left - pad, 0)
    src_bottom, src_right = min(bottom - pad, height), min(right - pad, width)
    if src_bottom > src_top and src_right > src_left:
        out[src_top + pad - top : src_bottom + pad - top, src_left + pad - left : src_right + pad - left] = frame_bgr[
            src_top:src_bottom, src_left:src_right
        ]
    return cv2.resize(out, (CROP_SIZE, CROP_SIZE))  # INTER_LINEAR


def split_tracks(
    boxes: Sequence[Box | None], *, max_gap: int = MAX_GAP, min_track: int = MIN_TRACK
) -> list[CropTrack]:
    """Per-frame boxes (None = no face) -> smoothed tracks; gaps up to max_gap are linearly interpolated."""
    present = [i for i, b in enumerate(boxes) if b is not None]
    if not present:
        raise NoFaceError(f"SyncNet crops: expected a face box in at least one frame, found none in {len(boxes)}")
    runs: list[list[int]] = [[present[0]]]
    for i in present[1:]:
        if i - runs[-1][-1] - 1 > max_gap:
            runs.append([])
        runs[-1].append(i)
    tracks = []
    for run in runs:
        if run[-1] - run[0] + 1 < min_track:
            continue
        frames = np.arange(run[0], run[-1] + 1)
        known = np.asarray([boxes[i] for i in run], dtype=np.float64)  # [K,4]
        filled = np.stack([np.interp(frames, run, known[:, c]) for c in range(4)], axis=1)
        tracks.append(smooth_track(filled, start=run[0]))
    if not tracks:
        raise NoFaceError(
            f"SyncNet crops: expected a face track of at least {min_track} frames, found face runs "
            f"{[(r[0], r[-1]) for r in runs]}"
        )
    return tracks


def crop_frames(frames_bgr: Iterable[np.ndarray], tracks: Sequence[CropTrack]) -> list[np.ndarray]:
    """Stream frames once; returns one [len,224,224,3] uint8 crop stack per track."""
    out: list[list[np.ndarray]] = [[] for _ in tracks]
    for index, frame in enumerate(frames_bgr):
        for k, track in enumerate(tracks):
            if track.start <= index < track.stop:
                j = index - track.start
                out[k].append(crop_face(frame, track.size[j], track.cx[j], track.cy[j]))
    for k, track in enumerate(tracks):
        if len(out[k]) != len(track.size):
            raise InvalidInputError(
                f"face track {track.start}..{track.stop}: expected frames up to {track.stop}, "
                f"found {track.start + len(out[k])}"
            )
    return [np.stack(crops) for crops in out]


def load_box_track(path: str | Path) -> list[Box | None]:
    """A track JSON: {"boxes": [[x1,y1,x2,y2] | null, ...]} or a bare list (one entry per 25 fps frame)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"box track {path}: expected a readable JSON file, found {exc}") from exc
    entries = data.get("boxes") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InvalidInputError(f"box track {path}: expected a list of boxes, found {type(entries).__name__}")
    boxes: list[Box | None] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            entry = entry.get("box")
        if entry is None:
            boxes.append(None)
            continue
        if not (isinstance(entry, list) and len(entry) == 4 and entry[2] > entry[0] and entry[3] > entry[1]):
            raise InvalidInputError(f"box track {path} frame {i}: expected [x1,y1,x2,y2] with x2>x1, y2>y1, "
                                    f"found {entry}")
        boxes.append(tuple(float(v) for v in entry))
    return boxes


STABLE_FACE_SIZE = 256  # StableSyncNet face side (px)


def square_face_crop(
    frame_rgb: np.ndarray, size: float, cx: float, cy: float, out: int = STABLE_FACE_SIZE
) -> np.ndarray:
    """[out,out,3] square of side 2*size around (cx, cy), grey-padded outside the frame.

    An approximation of the affine-aligned face StableSyncNet was trained on (used when no aligner is given).
    """
    half = max(size, 1.0)
    x1, y1 = int(round(cx - half)), int(round(cy - half))
    side = max(int(round(2 * half)), 1)
    height, width = frame_rgb.shape[:2]
    canvas = np.full((side, side, 3), PAD_VALUE, dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x1 + side, width), min(y1 + side, height)
    if sx2 > sx1 and sy2 > sy1:
        canvas[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frame_rgb[sy1:sy2, sx1:sx2]
    return cv2.resize(canvas, (out, out), interpolation=cv2.INTER_AREA)
