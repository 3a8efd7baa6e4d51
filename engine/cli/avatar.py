"""`engine avatar prepare`: align and VAE-encode a face video once, for cheap looping streaming sessions."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

PREPARE_DESCRIPTION = """\
Decode a face video, find and align the face in every frame, and VAE-encode the faces once, so that
streaming sessions (`engine serve --avatar NAME=DIR`, `StreamSession(sync, Avatar(DIR))`) skip face
detection and both VAE encodes per frame. The avatar directory holds the frames and faces losslessly
encoded (decoded frames equal the source's; --frames-crf trades that for size), the alignment matrices
and the VAE posteriors; it is only valid
for the model's resolution and VAE, and is written atomically (nothing appears on failure).
"""


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model, placement and face options shared by `engine avatar` and `engine serve`."""
    p.add_argument("--model", default="latentsync-1.6",
                   help="latentsync-1.6 (512 px, default), latentsync-1.5 (256 px), a local directory, or tiny-random")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--face", default="auto",
                   help="face source: auto | insightface | mediapipe | path to a face-track JSON")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    """The preset and its overrides (`engine serve`; the same flags as `engine run`)."""
    p.add_argument("--preset", default="reference", choices=["reference", "fast"],
                   help="reference = official settings (20 steps, guidance 1.5, DeepCache 3, seed 1247)")
    p.add_argument("--steps", type=int, help="DDIM steps (overrides the preset)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale; <= 1 disables CFG")
    p.add_argument("--deepcache", type=int, help="DeepCache interval; 0 disables it")
    p.add_argument("--seed", type=int, help="random seed (default 1247, the official one)")


def generation_settings(args: argparse.Namespace):
    """The SyncConfig that `add_generation_options` flags ask for."""
    from engine.pipeline.config import resolve_config

    return resolve_config(args.preset, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                          deepcache_interval=args.deepcache or None, deepcache_off=args.deepcache == 0)


def load_sync(args: argparse.Namespace, **kw):
    from engine.pipeline.sdk import LipSync

    return LipSync.from_pretrained(args.model, device=args.device, dtype=args.dtype, face=args.face,
                                   offline=args.offline, **kw)


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
    with frame_progress("avatar", enabled=not args.no_progress) as progress:
        avatar = prepare_avatar(sync, args.video, args.out, progress=progress, frames_crf=args.frames_crf)
    m = avatar.manifest
    print(f"avatar {avatar.path}: {m.num_frames} frames {m.width}x{m.height}, model {m.model} at {m.resolution} px, "
          f"face source {m.face_source}")
    return 0


@contextlib.contextmanager
def frame_progress(desc: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback drawing a tqdm bar on stderr, with log lines printed above the bar.

    Only on a terminal (and unless disabled); otherwise the callback does nothing.
    """
    if not (enabled and sys.stderr.isatty()):
        yield lambda done, total: None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    def update(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    with logging_redirect_tqdm(), tqdm(total=0, unit="frame", desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        yield update
