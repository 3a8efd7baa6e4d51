"""`engine avatar prepare`: align and VAE-encode a face video once, for cheap looping streaming sessions."""

from __future__ import annotations

import argparse

from engine.cli.options import add_model_options, load_sync

PREPARE_DESCRIPTION = """\
Decode a face video, find and align the face in every frame, and VAE-encode the faces once, so that
streaming sessions (`engine serve --avatar NAME=DIR`, `StreamSession(sync, Avatar(DIR))`) skip face
detection and both VAE encodes per frame. The avatar directory holds the frames and faces losslessly
encoded (decoded frames equal the source's; --frames-crf trades that for size), the alignment matrices
and the VAE posteriors; it is only valid
for the model's resolution and VAE, and is written atomically (nothing appears on failure).
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("avatar", help="prepare avatars for streaming", description=__doc__)
    actions = p.add_subparsers(dest="avatar_command", metavar="ACTION", required=True)
    prep = actions.add_parser("prepare", help="decode, align and VAE-encode every frame of a face video",
                              description=PREPARE_DESCRIPTION)
    prep.add_argument("--video", required=True, help="face video (any PyAV-readable container; resampled to 25 fps)")
    prep.add_argument("--out", required=True, help="new (or empty) avatar directory; written atomically")
    prep.add_argument("--frames-crf", type=int, default=None, metavar="CRF",
                      help="store frames at this x264 quality instead of losslessly: 12 is visually lossless "
                           "(PSNR ~48 dB) and ~4x smaller, but frames are no longer bit-exact (default: lossless)")
    add_model_options(prep)
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from engine.cli.progress import progress_bar
    from engine.media import probe
    from engine.media.paths import check_output_dir
    from engine.media.preflight import check_video_packets
    from engine.stream import prepare_avatar
    from engine.stream.avatar import check_new_avatar_dir
    from engine.stream.avatar_frames import x264_options

    check_output_dir(args.out, inputs=(("--video", args.video),), what="avatar --out")  # never over the input
    check_video_packets(args.video, probe(args.video, require_video=True))  # cheap, typed errors before any model loads
    check_new_avatar_dir(args.out)
    x264_options(args.frames_crf)
    sync = load_sync(args)
    with progress_bar(desc="avatar", unit="frame", enabled=not args.no_progress) as bar:
        avatar = prepare_avatar(sync, args.video, args.out, progress=bar.callback, frames_crf=args.frames_crf)
    m = avatar.manifest
    print(f"avatar {avatar.path}: {m.num_frames} frames {m.width}x{m.height}, model {m.model} at {m.resolution} px, "
          f"face source {m.face_source}")
    return 0
