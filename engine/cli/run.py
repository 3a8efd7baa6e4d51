"""`engine run`: lip-sync a video to speech and write an mp4."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="lip-sync a video to speech", description=__doc__)
    p.add_argument("--video", required=True, help="input video with a face (any PyAV-readable container)")
    p.add_argument("--audio", required=True, help="speech audio (wav, mp3, m4a, or a video's audio track)")
    p.add_argument("--output", "-o", required=True, help="output mp4 (written atomically: nothing appears on failure)")
    p.add_argument("--model", default="latentsync-1.6",
                   help="latentsync-1.6 (512 px, default), latentsync-1.5 (256 px), a local directory, or tiny-random")
    p.add_argument("--preset", default="reference", choices=["reference", "fast"],
                   help="reference = official settings (20 steps, guidance 1.5, DeepCache 3, seed 1247)")
    p.add_argument("--steps", type=int, help="DDIM steps (overrides the preset)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale; <= 1 disables CFG")
    p.add_argument("--deepcache", type=int, help="DeepCache interval; 0 disables it")
    p.add_argument("--seed", type=int, help="random seed (default 1247, the official one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--backend", default="auto",
                   help="auto (eager torch, or the built artifacts `engine export`/`build` registered or --artifacts"
                        " names; logs its choice) | torch | compile | onnxruntime | tensorrt, or per network:"
                        " unet=tensorrt,vae=torch,audio=torch")
    from engine.backends.config import add_artifacts_argument

    add_artifacts_argument(p)
    p.add_argument("--face", default="auto",
                   help="face source: auto | insightface | mediapipe (tracks, as mediapipe's video mode) | "
                        "mediapipe-static (detects every frame) | path to a face-track JSON")
    p.add_argument("--strict-faces", action="store_true", help="fail if any frame has no face (default: pass through)")
    p.add_argument("--crf", type=int, default=18, help="x264 quality (lower is better; default 18)")
    p.add_argument("--length", default="audio", choices=["audio", "official"],
                   help="output length: audio = as long as the speech (default), official = N//2+2 frames (80 ms longer)")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")
    p.add_argument("--report", help="write a JSON report (timings per stage, frame counts, no-face ranges)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from engine.media.paths import check_output
    from engine.media.preflight import preflight
    from engine.pipeline.sdk import LipSync, write_report

    # Everything about the files that can fail, before any model loads (about a second; typed errors):
    # output path, video metadata and packets, the whole audio track decoded and validated.
    checked = preflight(args.video, args.audio, args.output)
    if args.report:
        check_output(args.report, inputs=(("--video", args.video), ("--audio", args.audio), ("--output", args.output)),
                     suffixes=None, what="--report")
    from engine.backends.config import engine_config_from_args

    engine = engine_config_from_args(args)  # None: the defaults and what `engine build`/`export` registered
    sync = LipSync.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, face=args.face, backend=args.backend, offline=args.offline,
        **({"engine": engine} if engine is not None else {}),
    )
    from engine.cli.progress import progress_bar

    with progress_bar(desc="lip-sync", unit="frame", enabled=not args.no_progress) as bar:
        result = sync(
            args.video, checked.samples, str(checked.output), preset=args.preset, steps=args.steps, guidance=args.guidance,
            deepcache=args.deepcache, seed=args.seed, strict_faces=args.strict_faces, crf=args.crf,
            progress=bar.callback, length=args.length,
        )
    if args.report:
        write_report(result, args.report)
    print(result.summary())
    return 0
