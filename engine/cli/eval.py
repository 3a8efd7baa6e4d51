"""`engine eval`: measure lip-sync (SyncNet LSE-C/LSE-D, StableSyncNet) and fidelity of a produced video."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from engine.errors import InvalidInputError

RANDOM_SEED = 0  # --random-weights networks


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score lip-sync and fidelity of a produced video", description=__doc__)
    p.add_argument("--video", required=True, help="the lip-synced video to score (25 fps)")
    p.add_argument("--audio", help="the driving speech (default: the video's own audio track)")
    p.add_argument("--reference", help="a reference run of the same clip: adds PSNR / SSIM / flicker")
    p.add_argument("--json", help="also write the report as JSON to this file")
    faces = p.add_mutually_exclusive_group(required=True)
    faces.add_argument("--face", help="auto | insightface | mediapipe | a face-track file (latentsync-face-track "
                                      "JSON) | a box list JSON ({'boxes': [[x1,y1,x2,y2] or null, ...]})")
    faces.add_argument("--box", help="one fixed face box for every frame: x1,y1,x2,y2")
    p.add_argument("--syncnet-weights", help="SyncNet S checkpoint (default: download syncnet_v2.model, hash-checked)")
    p.add_argument("--no-syncnet", action="store_true", help="skip LSE-C / LSE-D")
    p.add_argument("--stable-syncnet-weights", help="StableSyncNet checkpoint; enables the StableSyncNet score")
    p.add_argument("--stable", action="store_true", help="StableSyncNet score with the downloaded stable_syncnet.pt")
    p.add_argument("--random-weights", action="store_true",
                   help="random networks (seeded): exercises the whole path, scores are meaningless")
    p.add_argument("--vshift", type=int, default=15, help="offset search range in frames (official 15)")
    p.add_argument("--batch-size", type=int, default=20, help="SyncNet windows per batch (official 20)")
    p.add_argument("--stable-stride", type=int, default=16, help="frames between StableSyncNet windows")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (the slowest fidelity metric)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")
    p.set_defaults(func=_eval)


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


def _finite(value):
    """JSON-safe: NaN/inf -> None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def summary(report: dict) -> str:
    lines = [f"video {report['video']}: {report['frames']} frames, face tracks {report['face_tracks']}"]
    if report["random_weights"]:
        lines.append("WARNING: random network weights: sync scores are meaningless")
    if report["lse"]:
        lse = report["lse"]
        lines.append(f"SyncNet  LSE-C {lse['lse_c']:.4f}  LSE-D {lse['lse_d']:.4f}  "
                     f"AV offset {lse['av_offset']} frames")
    if report["stable"]:
        st = report["stable"]
        lines.append(f"StableSyncNet  mean {st['mean_prob']:.4f}  in sync {100 * st['frac_in_sync']:.1f}% "
                     f"of {st['n_windows']} windows")
    if report["fidelity"]:
        fd = report["fidelity"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"vs reference  PSNR {fmt(fd['psnr_frame'])} dB (mouth {fmt(fd['psnr_mouth'])})  "
                     f"SSIM {fmt(fd['ssim_frame'])} (mouth {fmt(fd['ssim_mouth'])})  "
                     f"flicker {fmt(fd['flicker_mouth'])} (reference {fmt(fd['flicker_mouth_reference'])})")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from engine.eval.report import EvalNetworks, EvalOptions, evaluate_clip
    from engine.eval.stable_syncnet import load_stable_syncnet
    from engine.eval.syncnet import load_syncnet
    from engine.media import probe

    audio = args.audio or args.video
    probe(args.video, require_video=True)  # cheap typed failures (no stream, limits) before models load
    probe(audio, require_audio=True)
    options = EvalOptions(vshift=args.vshift, batch_size=args.batch_size, stable_stride=args.stable_stride,
                          compute_ssim=not args.no_ssim)  # fmt: skip

    def seed_for(weights: str | None) -> int | None:  # random only where no weight file is given
        return RANDOM_SEED if args.random_weights and weights is None else None

    syncnet = stable = None
    if not args.no_syncnet:
        syncnet = load_syncnet(args.syncnet_weights, random_seed=seed_for(args.syncnet_weights),
                               offline=args.offline, device=args.device)  # fmt: skip
    if args.stable or args.stable_syncnet_weights:
        stable = load_stable_syncnet(args.stable_syncnet_weights, random_seed=seed_for(args.stable_syncnet_weights),
                                     offline=args.offline, device=args.device)  # fmt: skip
    boxes, landmarks = face_boxes(args.face, args.box, args.video)
    report = evaluate_clip(args.video, audio, boxes, EvalNetworks(syncnet, stable, args.random_weights),
                           landmarks=landmarks, reference=args.reference, options=options).to_dict()  # fmt: skip
    report = _finite(report)
    print(summary(report))
    if args.json:
        path = Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)
    return 0
