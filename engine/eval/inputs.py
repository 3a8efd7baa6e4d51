"""What an evaluation needs besides the video: face boxes per frame and the scoring networks, from CLI-style specs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.errors import InvalidInputError, NoFaceError

RANDOM_SEED = 0  # --random-weights networks


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"--box: expected x1,y1,x2,y2, found {text!r}") from exc
    if not (x2 > x1 and y2 > y1):
        raise InvalidInputError(f"--box: expected x2 > x1 and y2 > y1, found {text!r}")
    return x1, y1, x2, y2


def face_boxes(spec: str | None, box: str | None, video: str) -> tuple[list, list | None]:
    """Per-frame (boxes, landmarks3 or None) from --box, a box-list JSON, or an engine.face.detection source
    ('auto' | 'insightface' | 'mediapipe' | a latentsync-face-track file) followed by its FaceTracker."""
    if box is not None:
        from engine.eval.video import frame_count

        return [parse_box(box)] * frame_count(video), None
    if spec is not None and _is_box_list(spec):
        from engine.eval.crops import load_box_track

        return load_box_track(spec), None
    from engine.eval.video import iter_rgb_frames
    from engine.face.detection import FaceTracker, make_face_source

    tracker = FaceTracker(make_face_source(spec))
    boxes, landmarks = [], []
    for index, rgb in enumerate(iter_rgb_frames(video)):
        observation = tracker.update(index, rgb)
        boxes.append(None if observation is None else tuple(float(v) for v in observation.box))
        landmarks.append(None if observation is None else observation.landmarks3)
    return boxes, landmarks


def require_a_face(spec: str, video: str) -> int:
    """Index of the first frame of `video` where the face source `spec` finds a face; NoFaceError when none does.

    Stops at the first face, so it is cheap on a usable clip and runs before any expensive work."""
    from engine.eval.video import iter_rgb_frames
    from engine.face.detection import FaceTracker, make_face_source

    if _is_box_list(spec):
        from engine.eval.crops import load_box_track

        found = [i for i, b in enumerate(load_box_track(spec)) if b is not None]
        if found:
            return found[0]
    else:
        tracker = FaceTracker(make_face_source(spec))
        for index, rgb in enumerate(iter_rgb_frames(video)):
            if tracker.update(index, rgb) is not None:
                return index
    raise NoFaceError(f"{video}: expected a face (face source {spec!r}) in at least one frame, found none")


def _is_box_list(spec: str) -> bool:
    """A JSON file in the evaluator's own box-list format ({"boxes": [...]} or a bare list)."""
    path = Path(spec)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # let load_box_track report it
    return isinstance(data, list) or (isinstance(data, dict) and "boxes" in data)


def load_networks(*, syncnet: bool = True, syncnet_weights: str | None = None, stable: bool = False,
                  stable_weights: str | None = None, random_weights: bool = False, offline: bool = False,
                  device: str = "cpu"):
    """EvalNetworks: SyncNet (unless `syncnet` is False) and StableSyncNet (when `stable` or its weights are given);
    `random_weights` seeds random networks where no weight file is given (scores then mean nothing)."""
    from engine.eval.report import EvalNetworks
    from engine.eval.stable_syncnet import load_stable_syncnet
    from engine.eval.syncnet import load_syncnet

    def seed_for(weights: str | None) -> int | None:  # random only where no weight file is given
        return RANDOM_SEED if random_weights and weights is None else None

    sync_net = stable_net = None
    if syncnet:
        sync_net = load_syncnet(syncnet_weights, random_seed=seed_for(syncnet_weights), offline=offline,
                                device=device)  # fmt: skip
    if stable or stable_weights:
        stable_net = load_stable_syncnet(stable_weights, random_seed=seed_for(stable_weights), offline=offline,
                                         device=device)  # fmt: skip
    return EvalNetworks(sync_net, stable_net, random_weights)


def finite_json(value):
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
