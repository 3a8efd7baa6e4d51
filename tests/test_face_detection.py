"""Face finding: InsightFace decoding through real ONNX Runtime sessions, mediapipe models against the golden
landmarks, track files, model cache hash checks, and the tracker (same person, no-face ranges, thresholds)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.errors import CheckpointError, InvalidInputError, NoFaceError
from engine.face.detection import (
    INSIGHTFACE_106_GROUPS,
    FaceObservation,
    FaceThresholds,
    FaceTracker,
    FrameFaces,
    Rejected,
    make_face_source,
    three_points,
)
from engine.face.detection import models
from engine.face.detection.base import clamp_box, split_candidates

FRAME_W, FRAME_H = 1080, 1920


# ----------------------------------------------------------------------------------------------- shared helpers
def _face(box, score=0.9) -> FaceObservation:
    x1, y1, x2, y2 = box
    pts = np.array([[x1 + 0.3 * (x2 - x1), y1 + 0.3 * (y2 - y1)], [x1 + 0.7 * (x2 - x1), y1 + 0.3 * (y2 - y1)],
                    [(x1 + x2) / 2, y1 + 0.55 * (y2 - y1)]])
    return FaceObservation(np.round(pts).astype(np.float32), tuple(map(float, box)), score)


class ScriptedSource:
    """A FaceSource whose candidates per frame are given as boxes (None = no face); counts detector calls."""

    name = "scripted"

    def __init__(self, boxes_per_frame, thresholds=FaceThresholds()):
        self.boxes = boxes_per_frame
        self.thresholds = thresholds
        self.calls = []

    def detect_all(self, frame_index, rgb):
        self.calls.append(frame_index)
        boxes = self.boxes[frame_index] or []
        return split_candidates([(b, 0.9, None) for b in boxes], self.thresholds, rgb.shape[1], rgb.shape[0],
                                lambda box, score, _: _face(box, score))

    def detect(self, frame_index, rgb):
        return self.detect_all(frame_index, rgb).chosen()


def _frames(n, w=640, h=480):
    blank = np.zeros((h, w, 3), np.uint8)
    return [(i, blank) for i in range(n)]


# ----------------------------------------------------------------------------------------------- base helpers
def test_three_points_rounds_like_the_official():
    pts = np.zeros((106, 2))
    pts[[43, 48, 49, 51, 50]] = [[10.4, 5.6], [11.5, 6.5], [12.49, 7.0], [13.0, 8.2], [14.0, 9.0]]
    pts[101:106] = [[50.0, 5.0]] * 5
    pts[[74, 77, 83, 86]] = [[30.2, 40.0], [31.0, 41.0], [32.0, 42.0], [33.0, 43.6]]
    got = three_points(pts, INSIGHTFACE_106_GROUPS)
    # rounded points: x 10,12,12,13,14 -> 12.2 -> 12; y 6,6,7,8,9 -> 7.2 -> 7 (np.round: 11.5 -> 12, 6.5 -> 6)
    np.testing.assert_array_equal(got, [[12, 7], [50, 5], [32, 42]])
    assert got.dtype == np.float32


def test_thresholds_give_reasons_and_clamp_boxes():
    t = FaceThresholds()
    assert t.rejection((0, 0, 100, 120), 0.9) is None
    assert "too small" in t.rejection((0, 0, 40, 120), 0.9)
    assert "too small" in t.rejection((0, 0, 100, 70), 0.9)
    assert "aspect" in t.rejection((0, 0, 200, 100), 0.9)
    assert "score" in t.rejection((0, 0, 100, 120), 0.3)
    faces = split_candidates([((-30, 1700, 200, 2050), 0.9, None), ((0, 0, 20, 20), 0.95, None)], t, 1080, 1920,
                             lambda box, s, _: _face(box, s))
    assert [f.box for f in faces.faces] == [(0.0, 1700.0, 200.0, 1920.0)]  # partly outside: clamped
    assert len(faces.rejected) == 1 and "too small" in faces.rejected[0].reason
    assert clamp_box((-5, -5, 5000, 5000), 100, 50) == (0.0, 0.0, 100.0, 50.0)
    assert FrameFaces((), (Rejected((0, 0, 1, 1), 0.2, "face score 0.20 below 0.5"),)).no_face_reason().startswith("face score")
    with pytest.raises(InvalidInputError):
        FaceThresholds(min_aspect=2.0, max_aspect=1.0)


# ----------------------------------------------------------------------------------------------- tracker
def test_tracker_keeps_the_same_person_when_sizes_swap():
    n = 12
    script = []
    for i in range(n):
        a = 200 - 10 * i  # left face shrinks 200 -> 90
        b = 90 + 10 * i  # right face grows 90 -> 200
        script.append([(50, 100, 50 + a, 100 + int(1.2 * a)), (350, 100, 350 + b, 100 + int(1.2 * b))])
    source = ScriptedSource(script)
    largest = [source.detect(i, rgb).box[0] for i, rgb in _frames(n)]
    assert largest[0] == 50 and largest[-1] == 350  # per-frame largest switches person
    track = FaceTracker(source).scan(_frames(n))
    assert [r.observation.box[0] for r in track.results] == [50] * n
    # a user-given box picks the other person, who is then kept
    track = FaceTracker(source, target_box=(340, 90, 450, 220)).scan(_frames(n))
    assert [r.observation.box[0] for r in track.results] == [350] * n
    # streaming update gives the same answers
    tracker = FaceTracker(source)
    assert [tracker.update(i, rgb).box[0] for i, rgb in _frames(n)] == [50] * n


def test_tracker_reports_no_face_ranges_and_strict_raises():
    box = (100, 100, 250, 300)
    script = [[box]] * 3 + [None] * 3 + [[box]] * 2 + [[(0, 0, 20, 20)]] + [[box]]
    track = FaceTracker(ScriptedSource(script)).scan(_frames(len(script)))
    assert track.no_face_ranges == [(3, 6), (8, 9)]
    assert track.no_face[0].reason == "no face detected"
    assert "too small" in track.no_face[1].reason
    lm = track.landmarks3()
    assert np.isnan(lm[3:6]).all() and not np.isnan(lm[[0, 6, 9]]).any()
    with pytest.raises(NoFaceError, match=r"2 range\(s\): frames 3-5 .*frames 8-8"):
        FaceTracker(ScriptedSource(script), strict=True).scan(_frames(len(script)))
    tracker = FaceTracker(ScriptedSource(script))
    for i, rgb in _frames(len(script)):
        tracker.update(i, rgb)
    assert [(r.start, r.stop) for r in tracker.no_face] == [(3, 6), (8, 9)]
    strict = FaceTracker(ScriptedSource(script), strict=True)
    with pytest.raises(NoFaceError, match="frame 3"):
        for i, rgb in _frames(len(script)):
            strict.update(i, rgb)


def test_tracker_fails_fast_without_any_face():
    with pytest.raises(NoFaceError, match="any of the 5 frames"):
        FaceTracker(ScriptedSource([None] * 5)).scan(_frames(5))


def test_tracker_ignores_other_faces_while_target_is_away_then_reacquires():
    target, other = (100, 100, 250, 300), (400, 100, 550, 300)
    script = [[target]] * 2 + [[other]] * 4 + [[target, other]]
    track = FaceTracker(ScriptedSource(script), reacquire_after=2).scan(_frames(7))
    how = [(r.observation.box[0] if r.observation else None) for r in track.results]
    # frames 2..4 are within 2 frames of the last sighting -> no face; frame 5 re-acquires the nearest face
    assert how[:2] == [100, 100] and how[2:4] == [None, None] and how[4] == 400 and how[6] == 400
    assert "other face" in track.no_face[0].reason


def test_tracker_interpolates_between_key_frames():
    n = 10  # key frames 0, 4, 8; frame 9 is detected at the end
    script = [[(100 + 8 * i, 100, 250 + 8 * i, 300)] for i in range(n)]
    source = ScriptedSource(script)
    track = FaceTracker(source, detect_every=4).scan(_frames(n))
    assert source.calls == [0, 4, 8, 9]
    assert [r.how for r in track.results] == ["detected"] + ["interpolated"] * 3 + ["detected"] + \
        ["interpolated"] * 3 + ["detected", "detected"]
    full = FaceTracker(ScriptedSource(script)).scan(_frames(n)).landmarks3()
    np.testing.assert_allclose(track.landmarks3(), full, atol=1.0)  # linear motion: within rounding
    # a key frame without the face makes the frames before it be detected one by one
    script[4] = None
    source = ScriptedSource(script)
    track = FaceTracker(source, detect_every=4).scan(_frames(n))
    assert source.calls[:5] == [0, 4, 1, 2, 3] and track.no_face_ranges == [(4, 5)]


def test_tracker_tracks_between_detections_when_the_source_can():
    class Trackable(ScriptedSource):
        def __init__(self, script):
            super().__init__(script)
            self.tracked = []

        def track(self, rgb, previous):
            box = previous.box
            self.tracked.append(box)
            return _face((box[0] + 5, box[1], box[2] + 5, box[3]))

    source = Trackable([[(100 + 5 * i, 100, 250 + 5 * i, 300)] for i in range(6)])
    tracker = FaceTracker(source, detect_every=3)
    boxes = [tracker.update(i, rgb).box[0] for i, rgb in _frames(6)]
    assert source.calls == [0, 3] and len(source.tracked) == 4
    assert boxes == [100, 105, 110, 115, 120, 125]
    assert tracker.last_result.how == "tracked"


# ----------------------------------------------------------------------------------------------- track files
def test_track_file_is_validated_and_honoured(tmp_path):
    class BoxLandmarker:
        def landmarks_in_box(self, rgb, box, landmarks=None):
            return _face(box, 1.0)

    doc = {"format": "latentsync-face-track", "version": 1, "frame_size": [640, 480], "frames": [
        {"index": 0, "landmarks3": [[10.5, 20], [30, 20], [20, 35]]},
        {"index": 1, "box": [100, 100, 250, 300]},
        {"index": 2, "face": None}]}
    path = tmp_path / "track.json"
    path.write_text(json.dumps(doc))
    source = make_face_source(str(path), landmarker=BoxLandmarker())
    track = FaceTracker(source).scan(_frames(4))
    np.testing.assert_array_equal(track.results[0].observation.landmarks3, [[10.5, 20], [30, 20], [20, 35]])
    assert track.results[1].observation.box == (100.0, 100.0, 250.0, 300.0)
    assert track.no_face_ranges == [(2, 4)]
    assert "not in the track file" in track.no_face[0].reason or "no face" in track.no_face[0].reason

    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps({"landmarks3": [[[1, 2], [3, 4], [5, 6]], None]}))
    track = FaceTracker(make_face_source(str(compact))).scan(_frames(2))
    assert track.no_face_ranges == [(1, 2)]

    with pytest.raises(InvalidInputError, match="frame_size"):
        FaceTracker(make_face_source(str(path), landmarker=BoxLandmarker())).scan(_frames(1, w=320, h=240))


@pytest.mark.parametrize("doc, match", [
    ("{not json", "expected JSON"),
    ([1, 2], "JSON object"),
    ({"frames": [{"index": 0, "landmarks3": [[1, 2], [3, 4]]}]}, "landmarks3"),
    ({"frames": [{"index": 0, "landmarks3": [[1, 2], [3, 4], [5, float("nan")]]}]}, "finite"),
    ({"frames": [{"index": 0, "box": [10, 10, 5, 50]}]}, "x2 > x1"),
    ({"frames": [{"index": 1, "face": None}, {"index": 1, "face": None}]}, "unique"),
    ({"frames": [{"index": -1, "face": None}]}, "index"),
    ({"frames": [{"index": 0, "box": [0, 0, 9, 9], "face": None}]}, "exactly one"),
    ({"version": 2, "frames": []}, "version"),
    ({"frames": [], "landmarks3": []}, "exactly one of 'frames'"),
])
def test_track_file_rejects_bad_input(tmp_path, doc, match):
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(InvalidInputError, match=match):
        make_face_source(str(path))


def test_track_file_missing_frames_policy(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"missing": "error", "landmarks3": [[[1, 2], [3, 4], [5, 6]]]}))
    with pytest.raises(InvalidInputError, match="entry for frame 1"):
        FaceTracker(make_face_source(str(path))).scan(_frames(2))


def test_make_face_source_rejects_unknown_spec():
    with pytest.raises(InvalidInputError, match="insightface"):
        make_face_source("retinaface")


# ----------------------------------------------------------------------------------------------- model cache
def _zip_with(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "pack.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_model_cache_checks_hashes(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    payload = b"model bytes"
    good = models.ModelFile("pack/model.bin", hashlib.sha256(payload).hexdigest())
    bad = models.ModelFile("pack/other.bin", "0" * 64)
    pack = _zip_with(tmp_path, {"inner/model.bin": payload, "inner/other.bin": b"tampered"})
    archive = models.Archive(urls=(pack.as_uri(),), sha256=None, members={"inner/model.bin": good}, license="test")
    path = models.ensure(good, archive)
    assert path == tmp_path / "cache" / "models" / "pack" / "model.bin" and path.read_bytes() == payload
    assert models.ensure(good, archive, offline=True) == path  # cached: no fetch needed
    # a member whose bytes do not match the pinned hash is refused and never written
    archive = models.Archive(urls=(pack.as_uri(),), sha256=None, members={"inner/other.bin": bad}, license="test")
    with pytest.raises(CheckpointError, match="expected sha256 0000"):
        models.ensure(bad, archive)
    assert not (tmp_path / "cache" / "models" / "pack" / "other.bin").exists()
    # a corrupted cache file is refused, not trusted
    path.write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="expected sha256"):
        models.ensure(good, archive)
    # a whole-archive hash is checked too, and offline mode never fetches
    archive = models.Archive(urls=(pack.as_uri(),), sha256="1" * 64, members={"inner/model.bin": good}, license="t")
    path.unlink()
    with pytest.raises(CheckpointError, match="expected sha256 1111"):
        models.ensure(good, archive)
    with pytest.raises(CheckpointError, match="offline"):
        models.ensure(good, archive, offline=True)


def test_model_cache_unreachable_url_is_a_checkpoint_error(tmp_path):
    model = models.ModelFile("x/y.bin", "0" * 64)
    archive = models.Archive(urls=((tmp_path / "missing.zip").as_uri(),), sha256=None, members={"y.bin": model},
                             license="t")
    with pytest.raises(CheckpointError, match="could not fetch"):
        models.ensure(model, archive, root=tmp_path)


# ----------------------------------------------------------------------------------------------- InsightFace (ONNX)
SCRFD_OUTPUTS = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]  # det_10g names and order
CELL = (10, 20)  # stride-16 cell (x, y) whose score is read from the input pixel there
PROBE_ANCHOR = (CELL[1] * 32 + CELL[0]) * 2  # row of that cell's first anchor at det size 512


def _scrfd_model(path: Path, rows: dict[int, dict[int, tuple[float, list[float]]]]) -> None:
    """An SCRFD-shaped ONNX model with det_10g's input and 9 outputs (det size 512).

    rows[stride][anchor] = (score, [l, t, r, b] in stride units). The score of PROBE_ANCHOR is not constant: it is
    the blob value at the probe cell's centre in channel 0, i.e. (B - 127.5) / 128 of the RGB frame when the
    BGR swap of the official call is kept.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], []
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    cy, cx = CELL[1] * 16, CELL[0] * 16
    for name, value in {"st": [0, 0, cy, cx], "en": [1, 1, cy + 1, cx + 1], "shape0": []}.items():
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    nodes += [helper.make_node("Slice", ["input.1", "st", "en"], ["probe4"]),
              helper.make_node("Reshape", ["probe4", "shape0"], ["probe"])]
    for k, stride in enumerate((8, 16, 32)):
        n = (512 // stride) ** 2 * 2
        score, dist, kps = np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
        mask = np.zeros((n, 1), np.float32)
        for anchor, (s, d) in rows.get(stride, {}).items():
            score[anchor, 0], dist[anchor] = s, d
            kps[anchor] = np.arange(10) * 0.1
        if stride == 16:
            mask[PROBE_ANCHOR, 0] = 1.0
        for tag, arr in (("score", score), ("mask", mask), ("bbox", dist), ("kps", kps)):
            inits.append(numpy_helper.from_array(arr, f"{tag}{stride}"))
        nodes += [helper.make_node("Mul", [f"mask{stride}", "probe"], [f"pm{stride}"]),
                  helper.make_node("Add", [f"score{stride}", f"pm{stride}"], [SCRFD_OUTPUTS[k]]),
                  helper.make_node("Identity", [f"bbox{stride}"], [SCRFD_OUTPUTS[3 + k]]),
                  helper.make_node("Identity", [f"kps{stride}"], [SCRFD_OUTPUTS[6 + k]])]
        outs += [(SCRFD_OUTPUTS[k], [n, 1]), (SCRFD_OUTPUTS[3 + k], [n, 4]), (SCRFD_OUTPUTS[6 + k], [n, 10])]
    order = {name: i for i, name in enumerate(SCRFD_OUTPUTS)}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in sorted(outs, key=lambda o: order[o[0]])]
    graph = helper.make_graph(nodes, "scrfd_test", [inp], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _landmark_model(path: Path, values: np.ndarray) -> None:
    """A 2d106det-shaped model: data [1,3,192,192] -> fc1 [1,212] = values + 0 * mean(input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(values.reshape(1, 212).astype(np.float32), "pred"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["data"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["m0"]),
             helper.make_node("Add", ["pred", "m0"], ["fc1"])]
    graph = helper.make_graph(nodes, "lmk_test", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                                [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture()
def insightface_models(tmp_path):
    pytest.importorskip("onnxruntime")
    rows = {
        16: {PROBE_ANCHOR: (0.0, [5, 6, 5, 9]),  # score from the probe pixel
             PROBE_ANCHOR + 1: (0.8, [5, 6, 5, 8])},  # same face, lower score: removed by NMS
        8: {10: (0.95, [1, 1, 1, 1])},  # a 16x16 px face in the canvas (60 px in the frame): too small
        32: {(3 * 16 + 4) * 2: (0.7, [2, 3, 2, 3])},  # a second, smaller usable face at another place
    }
    det, lmk = tmp_path / "det_10g.onnx", tmp_path / "2d106det.onnx"
    _scrfd_model(det, rows)
    values = np.random.default_rng(0).uniform(-0.8, 0.8, 212)
    _landmark_model(lmk, values)
    return det, lmk, values


def _probe_frame(blue: int) -> np.ndarray:
    frame = np.full((FRAME_H, FRAME_W, 3), 90, np.uint8)
    scale = 512 / FRAME_H  # letterbox: 1920 -> 512 rows, 1080 -> 288 columns
    x, y = int(CELL[0] * 16 / scale), int(CELL[1] * 16 / scale)
    frame[y - 12:y + 12, x - 12:x + 12] = (0, 0, blue)  # RGB: only blue lights the probe after the swap
    return frame


def test_insightface_decodes_scrfd_and_106_landmarks(insightface_models):
    from engine.face.detection.insightface import InsightFaceSource

    det, lmk, values = insightface_models
    source = make_face_source("insightface", detector_path=det, landmark_path=lmk, providers=["CPUExecutionProvider"])
    assert isinstance(source, InsightFaceSource)
    faces = source.detect_all(0, _probe_frame(blue=255))
    scale = 512 / FRAME_H
    cx, cy = CELL[0] * 16, CELL[1] * 16
    expected_box = ((cx - 80) / scale, (cy - 96) / scale, (cx + 80) / scale, (cy + 144) / scale)
    assert len(faces.faces) == 2 and len(faces.rejected) == 1
    assert "too small" in faces.rejected[0].reason
    chosen = faces.chosen()
    np.testing.assert_allclose(chosen.box, expected_box, rtol=1e-5)
    assert chosen.score == pytest.approx((255 - 127.5) / 128, rel=1e-5)
    # landmarks: the 212 outputs in [-1,1] of a 192 crop around the box, back in the frame
    w, h = expected_box[2] - expected_box[0], expected_box[3] - expected_box[1]
    s = 192 / (max(w, h) * 1.5)
    centre = np.array([(expected_box[0] + expected_box[2]) / 2, (expected_box[1] + expected_box[3]) / 2])
    points = ((values.reshape(106, 2) + 1) * 96 - 96) / s + centre
    np.testing.assert_allclose(chosen.landmarks, points, atol=0.05)
    expected3 = three_points(points, INSIGHTFACE_106_GROUPS)
    assert np.abs(chosen.landmarks3 - expected3).max() <= 1.0  # float32 box vs float64 reference: rounding edge
    # the other usable face is the smaller stride-32 one
    other = [f for f in faces.faces if f is not chosen][0]
    assert other.box[0] == pytest.approx((4 * 32 - 64) / scale, rel=1e-5)


def test_insightface_keeps_the_rgb_as_bgr_swap(insightface_models):
    det, lmk, _ = insightface_models
    source = make_face_source("insightface", detector_path=det, landmark_path=lmk, providers=["CPUExecutionProvider"])
    # a red probe would light channel 0 only without the swap: the probe face must not appear
    red = _probe_frame(blue=0)
    red[..., 0] = np.where(red[..., 2] == 0, 255, red[..., 0])
    faces = source.detect_all(0, red)
    assert sorted(f.score for f in faces.faces) == pytest.approx([0.7, 0.8])  # the 0.8 duplicate now survives NMS


def test_insightface_landmarks_in_box_follow_motion(insightface_models):
    det, lmk, _ = insightface_models
    source = make_face_source("insightface", detector_path=det, landmark_path=lmk, providers=["CPUExecutionProvider"])
    frame = _probe_frame(blue=255)
    first = source.landmarks_in_box(frame, (300.0, 800.0, 900.0, 1700.0))
    assert first.box == (300.0, 800.0, 900.0, 1700.0)
    moved = source.landmarks_in_box(frame, (300.0, 800.0, 900.0, 1700.0), first.landmarks - np.float32([10, 0]))
    assert moved.box[0] == pytest.approx(310.0, abs=1e-3)


# ----------------------------------------------------------------------------------------------- mediapipe (TFLite)
def test_blazeface_anchors_and_weighted_nms():
    from engine.face.detection.mediapipe import ssd_anchors, weighted_nms

    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    np.testing.assert_allclose(anchors[:2], [[0.5 / 16, 0.5 / 16]] * 2)  # 16x16 grid, 2 anchors per cell
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8]] * 6)  # 8x8 grid, 6 anchors per cell
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]])
    kps = np.zeros((3, 6, 2))
    kps[:, 0, 0] = [0.2, 0.3, 0.7]
    out = weighted_nms(boxes, kps, np.array([0.9, 0.6, 0.7]))
    assert [round(s, 2) for _, _, s in out] == [0.9, 0.7]
    np.testing.assert_allclose(out[0][0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)  # score-weighted merge
    assert out[0][1][0, 0] == pytest.approx((0.9 * 0.2 + 0.6 * 0.3) / 1.5)


def _mediapipe(spec: str):
    pytest.importorskip("ai_edge_litert")
    try:
        return make_face_source(spec)
    except CheckpointError as exc:
        if "could not fetch" in str(exc):
            pytest.skip(f"mediapipe models not cached and PyPI unreachable: {exc}")
        raise


@pytest.fixture(scope="module")
def mediapipe_source():
    """Static mode (detection on every frame): mediapipe's static_image_mode, what the golden landmarks used."""
    return _mediapipe("mediapipe-static")


@pytest.fixture(scope="module")
def mediapipe_video():
    """The default: mediapipe's video mode (tracking from the previous frame's landmarks)."""
    return _mediapipe("mediapipe")


@pytest.fixture(scope="module")
def demo1_frames(golden, media):
    av = pytest.importorskip("av")
    frames = []
    with av.open(str(media / "demo1_video.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 32:
                break
    return frames


def test_mediapipe_matches_golden_facemesh_landmarks(mediapipe_source, demo1_frames, golden):
    from safetensors.numpy import load_file

    inputs = load_file(str(golden / "e2e_demo1" / "inputs.safetensors"))
    origin = inputs["crop_origin_xy"].astype(np.float32)
    got = np.stack([mediapipe_source.detect(i, f).landmarks3 for i, f in enumerate(demo1_frames)]) - origin
    err = np.abs(got - inputs["landmarks3"])
    # golden: mediapipe 0.10.21 FaceMesh on the same frames; ours differs only by float/warp details
    assert err.max() <= 1.0 and (err == 0).mean() >= 0.9, (err.max(), (err == 0).mean())


def test_mediapipe_follows_head_roll(mediapipe_source, demo1_frames):
    import cv2

    frame = demo1_frames[0]
    base = mediapipe_source.detect(0, frame).landmarks3
    centre = tuple(float(v) for v in base.mean(axis=0))
    m = cv2.getRotationMatrix2D(centre, 30.0, 1.0)
    rolled = cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR)
    got = mediapipe_source.detect(0, rolled).landmarks3
    expected = base @ m[:, :2].T + m[:, 2]
    assert np.abs(got - expected).max() <= 4.0


def test_mediapipe_no_face_and_tracking_between_key_frames(mediapipe_source, demo1_frames):
    blank = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    faces = mediapipe_source.detect_all(0, blank)
    assert faces.chosen() is None and faces.no_face_reason() == "no face detected"
    frames = list(enumerate(demo1_frames[:12]))
    every = FaceTracker(mediapipe_source).scan(frames).landmarks3()
    sparse = FaceTracker(mediapipe_source, detect_every=4).scan(frames)
    assert [r.how for r in sparse.results][:5] == ["detected", "interpolated", "interpolated", "interpolated", "detected"]
    # the head moves non-linearly: interpolated points stay within a few % of the ~400 px face
    assert np.abs(sparse.landmarks3() - every).max() <= 20.0
    # a box from the user gives the mesh inside it
    inside = mediapipe_source.landmarks_in_box(demo1_frames[0], mediapipe_source.detect(0, demo1_frames[0]).box)
    assert np.abs(inside.landmarks3 - every[0]).max() <= 3.0


def test_auto_prefers_cached_insightface_models(insightface_models, tmp_path, monkeypatch):
    from engine.face.detection.insightface import InsightFaceSource

    det, lmk, _ = insightface_models
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    for attr, path in (("INSIGHTFACE_DETECTOR", det), ("INSIGHTFACE_LANDMARK", lmk)):
        pinned = models.ModelFile(getattr(models, attr).name, models.sha256_of(path))
        monkeypatch.setattr(models, attr, pinned)
        (models.cache_dir() / pinned.name).parent.mkdir(parents=True, exist_ok=True)
        (models.cache_dir() / pinned.name).write_bytes(path.read_bytes())
    source = make_face_source("auto", providers=["CPUExecutionProvider"])
    assert isinstance(source, InsightFaceSource)
    assert source.detect(0, _probe_frame(blue=255)) is not None


def test_mediapipe_partial_and_tiny_faces_never_index_outside(mediapipe_source, demo1_frames):
    import cv2

    frame = demo1_frames[0]
    for crop in (frame[:, 480:], frame[:, :640], frame[700:, :], frame[:760, :]):  # face cut by an edge
        faces = mediapipe_source.detect_all(0, crop)
        for f in faces.faces:
            x1, y1, x2, y2 = f.box
            assert 0 <= x1 <= x2 <= crop.shape[1] and 0 <= y1 <= y2 <= crop.shape[0]
        assert faces.faces or faces.no_face_reason()
    tiny = cv2.resize(frame, (frame.shape[1] // 6, frame.shape[0] // 6), interpolation=cv2.INTER_AREA)
    faces = mediapipe_source.detect_all(0, tiny)  # a ~50 px face: below the official 50x80 minimum
    assert faces.chosen() is None and faces.no_face_reason()


def test_scrfd_letterbox_both_orientations():
    from engine.face.detection.insightface import letterbox

    canvas, scale = letterbox(np.full((1080, 1920, 3), 200, np.uint8))  # landscape: full width
    assert scale == pytest.approx(512 / 1920) and canvas[:288, :].min() == 200 and canvas[288:].max() == 0
    canvas, scale = letterbox(np.full((1920, 1080, 3), 200, np.uint8))  # portrait: full height
    assert scale == pytest.approx(512 / 1920) and canvas[:, :288].min() == 200 and canvas[:, 288:].max() == 0


def test_model_cache_uses_a_matching_copy_the_user_already_has(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    elsewhere = tmp_path / "insightface" / "det.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"weights")
    model = models.ModelFile("buffalo_l/det.onnx", hashlib.sha256(b"weights").hexdigest(), also_at=(str(elsewhere),))
    assert models.cached(model) == elsewhere
    elsewhere.write_bytes(b"other weights")
    assert models.cached(model) is None  # not ours: skipped, not trusted


@pytest.mark.parametrize("ranges", [True, False])
def test_model_fetch_over_http_reads_only_the_members(tmp_path, ranges):
    import hashlib
    import http.server
    import threading

    payload = np.random.default_rng(1).bytes(20_000)
    filler = np.random.default_rng(2).bytes(3_000_000)  # incompressible: a range reader must skip it
    pack = _zip_with(tmp_path, {"big/filler.bin": filler, "m/face.tflite": payload})
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = pack.read_bytes()
            header = self.headers.get("Range")
            if ranges and header:
                start, stop = (int(v) for v in header.split("=")[1].split("-"))
                body = data[start:stop + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            served.append(len(body))  # before writing: the client may finish before this thread resumes
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (a probe answered with the whole file)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = models.ModelFile("m/face.tflite", hashlib.sha256(payload).hexdigest())
        url = f"http://127.0.0.1:{server.server_address[1]}/pack.zip"
        archive = models.Archive(urls=(url,), sha256=None, members={"m/face.tflite": model}, license="test")
        path = models.ensure(model, archive, root=tmp_path / "cache")
        assert path.read_bytes() == payload
        if ranges:
            assert sum(served) < len(filler) // 4  # only the directory and the member were read
        else:
            assert sum(served) >= pack.stat().st_size
    finally:
        server.shutdown()
        server.server_close()



@pytest.fixture()
def private_face_cache(mediapipe_source, tmp_path, monkeypatch):
    """A face-model cache of this test's own holding the mediapipe files (so no record of another test leaks in)."""
    import shutil

    root = tmp_path / "engine-cache"
    cache = root / "models"  # models.cache_dir() under that root
    for model in models.MEDIAPIPE_WHEEL.members.values():
        (cache / model.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(models.cache_dir() / model.name, cache / model.name)
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    assert models.cache_dir() == cache
    return cache


def test_auto_falls_back_to_mediapipe_and_remembers_a_failed_download(private_face_cache, monkeypatch, caplog):
    import engine.face.detection as detection
    from engine.face.detection.mediapipe import MediapipeFaceSource

    fetch = models.fetch_members
    attempts = []

    def no_network_for_insightface(archive, root):
        if any("insightface" in url for url in archive.urls):
            attempts.append(archive.urls[0])
            raise CheckpointError(f"could not fetch {sorted(archive.members)}: {archive.urls[0]}: no network")
        return fetch(archive, root)

    monkeypatch.setattr(models, "fetch_members", no_network_for_insightface)
    monkeypatch.setattr(detection, "_logged_fallbacks", set())
    with caplog.at_level("DEBUG", logger="engine.face.detection"):
        source = make_face_source("auto")
        assert isinstance(source, MediapipeFaceSource) and source.video_mode
        assert len(attempts) == 1 and "no network" in caplog.text
        # the failure is remembered in the cache: the next runs neither retry nor repeat the INFO line
        monkeypatch.setattr(detection, "_logged_fallbacks", set())  # as in a new process
        caplog.clear()
        assert isinstance(make_face_source("auto"), MediapipeFaceSource)
        assert isinstance(make_face_source("auto"), MediapipeFaceSource)
    assert len(attempts) == 1
    infos = [r for r in caplog.records if r.levelname == "INFO" and "face source auto" in r.getMessage()]
    assert len(infos) == 1 and "download failed" in infos[0].getMessage() and "--face insightface" in infos[0].getMessage()
    # an explicit request always tries, and a record older than the retry period is ignored
    with pytest.raises(CheckpointError, match="could not fetch"):
        make_face_source("insightface")
    assert len(attempts) == 2
    record = private_face_cache / detection.FETCH_FAILED_FILE
    record.write_text(json.dumps({"time": 0, "reason": "long ago"}))
    make_face_source("auto")
    assert len(attempts) == 3


def test_tests_use_a_private_cache(engine_cache):
    from engine.weights import engine_cache_dir

    home = Path.home() / ".cache" / "latentsync-engine"
    assert engine_cache_dir() == engine_cache and models.cache_dir() == engine_cache / "models"
    assert home not in engine_cache.parents and engine_cache != home


# ----------------------------------------------------------------------------------------------- video mode (R11, 5)
def test_video_mode_tracks_from_the_previous_landmarks(mediapipe_source, mediapipe_video, demo1_frames):
    frames = list(enumerate(demo1_frames[:12]))
    calls = []

    class Counting:  # the video source, counting detector runs
        name, video_mode = "counting", True

        def detect_all(self, i, rgb):
            calls.append(i)
            return mediapipe_video.detect_all(i, rgb)

        def track(self, rgb, previous):
            return mediapipe_video.track(rgb, previous)

    track = FaceTracker(Counting()).scan(frames)
    assert calls == [0] and [r.how for r in track.results] == ["detected"] + ["tracked"] * 11
    static = FaceTracker(mediapipe_source).scan(frames)
    assert [r.how for r in static.results] == ["detected"] * 12
    brow = np.linalg.norm(static.landmarks3()[:, 1] - static.landmarks3()[:, 0], axis=-1).min()
    assert np.abs(track.landmarks3() - static.landmarks3()).max() <= 0.3 * brow  # the same face (static jitters)
    # streaming update and scan agree; a fresh tracker over the same source starts over (no state in the source)
    tracker = FaceTracker(mediapipe_video)
    streamed = np.stack([tracker.update(i, rgb).landmarks3 for i, rgb in frames])
    np.testing.assert_array_equal(streamed, FaceTracker(mediapipe_video).scan(frames).landmarks3())


def test_video_mode_detects_again_when_tracking_is_lost(mediapipe_video, demo1_frames):
    blank = np.zeros_like(demo1_frames[0])
    frames = list(enumerate([demo1_frames[0], demo1_frames[1], blank, blank, demo1_frames[4], demo1_frames[5]]))
    track = FaceTracker(mediapipe_video).scan(frames)
    assert [r.how for r in track.results] == ["detected", "tracked", "none", "none", "detected", "tracked"]
    assert track.no_face_ranges == [(2, 4)] and track.no_face[0].reason == "no face detected"


def _roll(frame, centre, degrees, scale=1.0, shift=(0.0, 0.0)):
    import cv2

    m = cv2.getRotationMatrix2D(centre, degrees, scale)
    m[:, 2] += shift
    return cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR), m


def test_video_mode_follows_known_motion(mediapipe_source, mediapipe_video, demo1_frames):
    """One real frame warped by known similarities (the head rolls to 21 deg and back while it moves and scales):
    the truth is the first frame's points moved by the same warps. benchmarks/face_track.py compares the modes."""
    base = mediapipe_source.detect(0, demo1_frames[0]).landmarks3.astype(np.float64)
    centre = tuple(base.mean(axis=0))
    steps = [3 * k for k in range(8)] + [3 * k for k in range(6, -1, -1)]  # 0..21..0 deg
    warped = [_roll(demo1_frames[0], centre, a, 1 + a / 150, (2 * a, -a)) for a in steps]
    truth = np.stack([base @ m[:, :2].T + m[:, 2] for _, m in warped])
    track = FaceTracker(mediapipe_video).scan([(i, f) for i, (f, _) in enumerate(warped)])
    assert [r.how for r in track.results] == ["detected"] + ["tracked"] * (len(steps) - 1)
    error = np.linalg.norm(track.landmarks3() - truth, axis=-1).mean(axis=1)  # [T] px; the brows are ~100 px apart
    assert error.max() <= 8.0, error
    angle = np.degrees(np.arctan2(*(track.landmarks3()[:, 1] - track.landmarks3()[:, 0]).T[::-1]))
    truth_angle = np.degrees(np.arctan2(*(truth[:, 1] - truth[:, 0]).T[::-1]))
    assert np.abs(angle - truth_angle).max() <= 2.5


@pytest.fixture(scope="module")
def two_faces(demo1_frames, media):
    """R11: demo1's and demo2's speakers side by side; the left one shrinks while the right one grows."""
    import cv2

    from engine.media import iter_video_frames

    n = 12
    second = [f.rgb for f in iter_video_frames(media / "demo2_video.mp4", max_frames=n)]
    frames = []
    for i in range(n):
        canvas = np.full((320, 640, 3), 40, np.uint8)
        big, small = 310 - 12 * i, 178 + 12 * i  # tile sides: 310 -> 178 px and 178 -> 310 px (equal at frame 5.5)
        # (frame, tile side, tile centre x, square around the speaker's face: centre x, centre y, side)
        for rgb, side, cx, (fx, fy, fs) in ((demo1_frames[i], big, 160, (595, 730, 460)),
                                            (second[i], small, 480, (550, 480, 560))):
            tile = cv2.resize(rgb[fy - fs // 2:fy + fs // 2, fx - fs // 2:fx + fs // 2], (side, side),
                              interpolation=cv2.INTER_AREA)
            top = (320 - side) // 2
            canvas[top:top + side, cx - side // 2:cx - side // 2 + side] = tile
        frames.append((i, canvas))
    return frames


@pytest.mark.parametrize("spec", ["mediapipe", "mediapipe-static"])
def test_two_real_faces_swapping_sizes_keep_the_target(two_faces, spec, mediapipe_source):
    source = make_face_source(spec)
    largest = [source.detect(i, rgb) for i, rgb in two_faces]
    assert largest[0].center[0] < 320 and largest[-1].center[0] > 320  # per-frame largest switches person
    for target_box, left in ((None, True), ((420, 90, 540, 220), False)):  # default: the largest at the start
        track = FaceTracker(make_face_source(spec), target_box=target_box).scan(two_faces)
        assert not track.no_face_ranges
        sides = [r.observation.center[0] < 320 for r in track.results]
        assert sides == [left] * len(two_faces), (target_box, sides)


def test_user_boxes_in_a_track_file_are_honoured(two_faces, mediapipe_video, tmp_path):
    right = [(330, 10, 630, 310)] * len(two_faces)  # the right half: the growing speaker
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"frames": [{"index": i, "box": list(b)} for i, b in enumerate(right)]}))
    track = FaceTracker(make_face_source(str(path), landmarker=mediapipe_video)).scan(two_faces)
    assert all(r.observation.center[0] > 320 for r in track.results)


# ----------------------------------------------------------------------------------------------- no-face reasons (11.11)
def test_no_face_reasons_say_why(mediapipe_source, demo1_frames):
    import cv2

    frame = demo1_frames[0]
    tiny = cv2.resize(frame, (frame.shape[1] // 6, frame.shape[0] // 6), interpolation=cv2.INTER_AREA)
    assert mediapipe_source.detect_all(0, tiny).no_face_reason().startswith("face too small: ")
    cut = mediapipe_source.detect_all(0, frame[:, 560:]).no_face_reason()  # half the face beyond the left edge
    assert "score" in cut and "partly out of frame" in cut, cut
    assert mediapipe_source.detect_all(0, np.zeros_like(frame)).no_face_reason() == "no face detected"
    with pytest.raises(NoFaceError, match=r"any of the 3 frames \(face too small: .* \(3 frames\)\)"):
        FaceTracker(mediapipe_source).scan([(i, tiny) for i in range(3)])


def test_insightface_names_a_low_score(tmp_path):
    pytest.importorskip("onnxruntime")
    from engine.face.detection.insightface import InsightFaceSource

    det, lmk = tmp_path / "det.onnx", tmp_path / "lmk.onnx"
    _scrfd_model(det, {16: {PROBE_ANCHOR: (0.0, [5, 6, 5, 9])}})  # only the probe face, scored by its pixel
    _landmark_model(lmk, np.zeros(212))
    source = InsightFaceSource(detector_path=det, landmark_path=lmk, providers=["CPUExecutionProvider"])
    dim = int(round(0.3 * 128 + 127.5))  # blob value 0.3 -> score 0.30
    assert source.detect_all(0, _probe_frame(blue=dim)).no_face_reason() == "face score 0.30 below the detector's 0.5"
    assert source.detect_all(0, _probe_frame(blue=0)).no_face_reason() == "no face detected"
    assert source.detect(0, _probe_frame(blue=255)) is not None


def test_the_sdk_no_face_error_carries_the_reason(demo1_frames):
    import cv2

    from engine.pipeline.sdk import LipSync

    tiny = cv2.resize(demo1_frames[0], (180, 320), interpolation=cv2.INTER_AREA)
    sync = LipSync.from_pretrained("tiny-random", device="cpu", face="mediapipe")
    with pytest.raises(NoFaceError, match="face too small"):
        sync(np.stack([tiny] * 4), np.zeros(4 * 640, np.float32), steps=1, guidance=1.0)
