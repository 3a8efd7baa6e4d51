"""What an evaluation needs besides the video: face boxes per frame and the scoring networks, from CLI-style specs."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from engine.errors import CheckpointError, InvalidInputError, NoFaceError

RANDOM_SEED = 0  # --random-weights networks


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise InvalidInputError(f"--box: expected x1,y1,x2,y2, found {text!r}") from exc
    if not (x2 > x1 and y2 > y1):
        raise InvalidInputError(f"--box: expected x2 > x1 and y2 > y1, found {text!r}")
    return x1, y1, x2, y2


def face_boxes(spec: str | None, box: str | None, video: str, progress=None) -> tuple[list, list | None]:
    """Per-frame (boxes, landmarks3 or None) from --box, a box-list JSON, or an engine.face.detection source
    ('auto' | 'insightface' | 'mediapipe' | 'mediapipe-static' | a latentsync-face-track file; None: 'auto', as
    `engine run`) followed by its FaceTracker. `progress(done, total)` follows the frames scanned."""
    if box is not None:
        from engine.eval.video import frame_count

        return [parse_box(box)] * frame_count(video), None
    if spec is not None and _is_box_list(spec):
        from engine.eval.crops import load_box_track

        return load_box_track(spec), None
    from engine.eval.video import iter_rgb_frames
    from engine.face.detection import FaceTracker, make_face_source

    from engine.eval.video import frame_count

    tracker = FaceTracker(make_face_source(spec or "auto"))
    boxes, landmarks = [], []
    total = frame_count(video) if progress is not None else 0
    for index, rgb in enumerate(iter_rgb_frames(video)):
        if progress is not None:
            progress(index + 1, max(total, index + 1))
        observation = tracker.update(index, rgb)
        boxes.append(None if observation is None else tuple(float(v) for v in observation.box))
        landmarks.append(None if observation is None else observation.landmarks3)
    if not any(b is not None for b in boxes):
        why = tracker.why_no_face()
        raise NoFaceError(f"{video}: expected a face (face source {spec or 'auto'!r}) in at least one frame, found "
                          f"none in {len(boxes)} frames" + (f" ({why})" if why else ""))
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
        why = tracker.why_no_face()
        raise NoFaceError(f"{video}: expected a face (face source {spec!r}) in at least one frame, found none"
                          + (f" ({why})" if why else ""))
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
        with _weights_help(syncnet_weights, SYNCNET_HELP):
            sync_net = load_syncnet(syncnet_weights, random_seed=seed_for(syncnet_weights), offline=offline,
                                    device=device)  # fmt: skip
    if stable or stable_weights:
        with _weights_help(stable_weights, STABLE_HELP):
            stable_net = load_stable_syncnet(stable_weights, random_seed=seed_for(stable_weights), offline=offline,
                                             device=device)  # fmt: skip
    return EvalNetworks(sync_net, stable_net, random_weights)


SYNCNET_HELP = ("SyncNet weights (syncnet_v2.model) are needed for LSE-C / LSE-D; options: --syncnet-weights PATH "
                "(a local copy), --no-syncnet (skip LSE-C / LSE-D), --random-weights (run the whole path with random "
                "networks; scores meaningless)")
STABLE_HELP = ("StableSyncNet weights (stable_syncnet.pt) are needed for --stable; options: --stable-syncnet-weights "
               "PATH (a local copy), leave out --stable, --random-weights (scores meaningless)")


@contextlib.contextmanager
def _weights_help(given: str | None, help_text: str):
    """A download that fails (no network, not cached) says which options get the evaluation going anyway."""
    try:
        yield
    except CheckpointError as exc:
        if given is not None:  # the user's own file is broken: the error already names it
            raise
        raise CheckpointError(f"{help_text}. Not available: {exc}") from exc


def finite_json(value):
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
