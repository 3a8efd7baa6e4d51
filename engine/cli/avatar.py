"""`engine avatar prepare`: align and VAE-encode a face video once, for cheap looping streaming sessions."""

from __future__ import annotations

import argparse


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model, placement and face options shared by `engine avatar` and `engine serve`."""
    p.add_argument("--model", default="latentsync-1.6",
                   help="latentsync-1.6 (512 px, default), latentsync-1.5 (256 px), a local directory, or tiny-random")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--face", default="auto",
                   help="face source: auto | insightface | mediapipe | path to a face-track JSON")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")


def load_sync(args: argparse.Namespace, **kw):
    from engine.pipeline.sdk import LipSync

    return LipSync.from_pretrained(args.model, device=args.device, dtype=args.dtype, face=args.face,
                                   offline=args.offline, **kw)


def register(subparsers) -> None:
    p = subparsers.add_parser("avatar", help="prepare avatars for streaming", description=__doc__)
    actions = p.add_subparsers(dest="avatar_command", metavar="ACTION", required=True)
    prep = actions.add_parser("prepare", help="decode, align and VAE-encode every frame of a face video")
    prep.add_argument("--video", required=True, help="face video (any PyAV-readable container; resampled to 25 fps)")
    prep.add_argument("--out", required=True, help="new (or empty) avatar directory; written atomically")
    add_model_options(prep)
    prep.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from engine.media import probe
    from engine.media.paths import check_output_dir
    from engine.media.preflight import check_video_packets
    from engine.stream import prepare_avatar
    from engine.stream.avatar import check_new_avatar_dir

    check_output_dir(args.out, inputs=(("--video", args.video),), what="avatar --out")  # never over the input
    check_video_packets(args.video, probe(args.video, require_video=True))  # cheap, typed errors before any model loads
    check_new_avatar_dir(args.out)
    sync = load_sync(args)
    avatar = prepare_avatar(sync, args.video, args.out)
    m = avatar.manifest
    print(f"avatar {avatar.path}: {m.num_frames} frames {m.width}x{m.height}, model {m.model} at {m.resolution} px, "
          f"face source {m.face_source}")
    return 0
