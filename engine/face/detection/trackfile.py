"""A face track given by the user (JSON): per-frame alignment points or face boxes, validated and honoured as-is.

Schema (version 1)::

    {
      "format": "latentsync-face-track", "version": 1,     # both optional
      "frame_size": [width, height],                       # optional; checked against the frames when given
      "missing": "no_face",                                # frames absent from the file: "no_face" (default) | "error"
      "frames": [                                          # one object per frame, any order, unique indices
        {"index": 0, "landmarks3": [[x, y], [x, y], [x, y]]},   # brow left, brow right, nose (frame pixels)
        {"index": 1, "box": [x1, y1, x2, y2]},                 # face box: landmarks are found inside it
        {"index": 2, "face": null}                             # no face: the frame passes through unchanged
      ]
    }

A compact form is also accepted: ``{"landmarks3": [[[x,y],[x,y],[x,y]], null, ...]}`` (entry i is frame i).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import InvalidInputError, expect
from engine.face.detection.base import Box, FaceObservation, FrameFaces, Rejected, check_frame, clamp_box

FORMAT = "latentsync-face-track"
VERSION = 1
MAX_FILE_BYTES = 256 << 20
MISSING_POLICIES = ("no_face", "error")


@dataclass(frozen=True)
class TrackEntry:
    """What the file says about one frame: landmarks3, a box, or no face (both None)."""

    landmarks3: np.ndarray | None = None  # [3,2] float32
    box: Box | None = None


@dataclass(frozen=True)
class FaceTrackFile:
    entries: dict[int, TrackEntry]
    frame_size: tuple[int, int] | None = None
    missing: str = "no_face"


def load_track_file(path: str | Path) -> FaceTrackFile:
    """Read and validate a track file; InvalidInputError (expected vs found) on any problem."""
    path = Path(path)
    expect(path.is_file(), InvalidInputError, "face track file", "an existing JSON file", str(path))
    size = path.stat().st_size
    expect(size <= MAX_FILE_BYTES, InvalidInputError, f"face track file {path}", f"<= {MAX_FILE_BYTES} bytes", size)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"face track file {path}: expected JSON, found {type(exc).__name__}: {exc}") from None
    return parse_track(doc, where=str(path))


def parse_track(doc, *, where: str = "face track") -> FaceTrackFile:
    expect(isinstance(doc, dict), InvalidInputError, where, "a JSON object", type(doc).__name__)
    expect(doc.get("format", FORMAT) == FORMAT, InvalidInputError, f"{where} format", FORMAT, doc.get("format"))
    expect(doc.get("version", VERSION) == VERSION, InvalidInputError, f"{where} version", VERSION, doc.get("version"))
    missing = doc.get("missing", "no_face")
    expect(missing in MISSING_POLICIES, InvalidInputError, f"{where} missing", MISSING_POLICIES, missing)
    frame_size = doc.get("frame_size")
    if frame_size is not None:
        expect(isinstance(frame_size, list) and len(frame_size) == 2 and all(_is_int(v) and v > 0 for v in frame_size),
               InvalidInputError, f"{where} frame_size", "[width, height] positive integers", frame_size)
        frame_size = (int(frame_size[0]), int(frame_size[1]))
    expect(("frames" in doc) != ("landmarks3" in doc), InvalidInputError, where,
           "exactly one of 'frames' or 'landmarks3'", sorted(doc))
    entries: dict[int, TrackEntry] = {}
    if "landmarks3" in doc:
        items = doc["landmarks3"]
        expect(isinstance(items, list), InvalidInputError, f"{where} landmarks3", "a list", type(items).__name__)
        for i, pts in enumerate(items):
            entries[i] = TrackEntry() if pts is None else TrackEntry(_points(pts, f"{where} landmarks3[{i}]"))
    else:
        items = doc["frames"]
        expect(isinstance(items, list), InvalidInputError, f"{where} frames", "a list", type(items).__name__)
        for n, item in enumerate(items):
            what = f"{where} frames[{n}]"
            expect(isinstance(item, dict), InvalidInputError, what, "an object", type(item).__name__)
            index = item.get("index")
            expect(_is_int(index) and index >= 0, InvalidInputError, f"{what}.index", "an integer >= 0", index)
            expect(index not in entries, InvalidInputError, f"{what}.index", "unique frame indices", f"{index} twice")
            keys = [k for k in ("landmarks3", "box", "face") if k in item]
            expect(len(keys) == 1, InvalidInputError, what, "exactly one of landmarks3, box, face", keys)
            if keys[0] == "face":
                expect(item["face"] is None, InvalidInputError, f"{what}.face", "null (no face)", item["face"])
                entries[index] = TrackEntry()
            elif keys[0] == "landmarks3":
                entries[index] = TrackEntry(landmarks3=_points(item["landmarks3"], f"{what}.landmarks3"))
            else:
                entries[index] = TrackEntry(box=_box(item["box"], f"{what}.box"))
    return FaceTrackFile(entries, frame_size, missing)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_numbers(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _points(value, what: str) -> np.ndarray:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(p, list) and len(p) == 2 and _finite_numbers(p) for p in value)
    expect(ok, InvalidInputError, what, "[[x, y], [x, y], [x, y]] finite numbers", value)
    return np.asarray(value, dtype=np.float32)


def _box(value, what: str) -> Box:
    ok = isinstance(value, list) and len(value) == 4 and _finite_numbers(value)
    expect(ok and value[2] > value[0] and value[3] > value[1], InvalidInputError, what,
           "[x1, y1, x2, y2] with x2 > x1 and y2 > y1", value)
    return tuple(float(v) for v in value)


def box_around_points(points: np.ndarray) -> Box:
    """A face-sized box around the three alignment points (for tracking and reports only)."""
    span = float(np.linalg.norm(points[1] - points[0])) or 1.0
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (float(lo[0] - 0.5 * span), float(lo[1] - 0.5 * span), float(hi[0] + 0.5 * span), float(hi[1] + 1.5 * span))


class TrackFileSource:
    """`FaceSource` reading a track file. Boxes need a landmarker (a source with `landmarks_in_box`)."""

    name = "trackfile"
    authoritative = True  # the tracker honours it as-is (no identity matching)

    def __init__(self, track: FaceTrackFile | str | Path, *, landmarker=None) -> None:
        self.track = track if isinstance(track, FaceTrackFile) else load_track_file(track)
        self._landmarker = landmarker

    def detect(self, frame_index: int, rgb: np.ndarray) -> FaceObservation | None:
        return self.detect_all(frame_index, rgb).chosen()

    def detect_all(self, frame_index: int, rgb: np.ndarray) -> FrameFaces:
        width, height = check_frame(rgb)
        if self.track.frame_size is not None:
            expect(self.track.frame_size == (width, height), InvalidInputError, "face track frame_size",
                   self.track.frame_size, (width, height))
        entry = self.track.entries.get(frame_index)
        if entry is None:
            expect(self.track.missing == "no_face", InvalidInputError, "face track",
                   f"an entry for frame {frame_index}", "none")
            return _no_face(f"frame {frame_index} not in the track file")
        if entry.landmarks3 is not None:
            box = clamp_box(box_around_points(entry.landmarks3), width, height)
            return FrameFaces((FaceObservation(entry.landmarks3.copy(), box, 1.0),))
        if entry.box is None:
            return _no_face("no face (track file)")
        observation = self._get_landmarker().landmarks_in_box(rgb, entry.box)
        if observation is None:
            return _no_face(f"no face found inside the track-file box {entry.box}")
        return FrameFaces((observation,))

    def _get_landmarker(self):
        if self._landmarker is None:
            from engine.face.detection import make_face_source

            self._landmarker = make_face_source("auto")
        return self._landmarker


def _no_face(reason: str) -> FrameFaces:
    return FrameFaces((), (Rejected((0.0, 0.0, 0.0, 0.0), 0.0, reason),))
