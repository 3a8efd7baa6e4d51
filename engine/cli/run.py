"""`engine run`: lip-sync a video to speech and write an mp4."""

from __future__ import annotations

import argparse

from engine.cli.options import add_generation_options, add_length_option, add_model_options, add_output_audio_option


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="lip-sync a video to speech", description=__doc__)
    p.add_argument("--video", required=True, help="input video with a face (any PyAV-readable container)")
    p.add_argument("--audio", required=True, help="speech audio (wav, mp3, m4a, or a video's audio track)")
    p.add_argument("--output", "-o", required=True, help="output mp4 (written atomically: nothing appears on failure)")
    add_model_options(p)
    add_generation_options(p)
    p.add_argument("--strict-faces", action="store_true", help="fail if any frame has no face (default: pass through)")
    p.add_argument("--crf", type=int, default=18, help="x264 quality (lower is better; default 18)")
    p.add_argument("--encode-preset", default="medium",
                   help="x264 preset (default medium; veryfast/ultrafast encode 1080p several times faster at a "
                        "larger file, see docs/system-benchmark.md)")
    p.add_argument("--video-io", default="auto", choices=["auto", "cpu", "gpu"],
                   help="video decode/encode: cpu = PyAV; gpu = NVDEC decode + NVENC encode (needs the [gpu-video] "
                        "extra and a CUDA device); auto (default) = gpu only when both are present")
    add_length_option(p)
    add_output_audio_option(p)
    p.add_argument("--report", help="write a JSON report (timings per stage, frame counts, no-face ranges)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from engine.cli.options import generation_settings, load_sync
    from engine.cli.progress import progress_bar
    from engine.media.paths import check_output
    from engine.media.preflight import preflight
    from engine.pipeline.sdk import write_report

    # Everything about the files that can fail, before any model loads (about a second; typed errors):
    # output path, video metadata and packets, the whole audio track decoded and validated.
    checked = preflight(args.video, args.audio, args.output)
    if args.report:
        check_output(args.report, inputs=(("--video", args.video), ("--audio", args.audio), ("--output", args.output)),
                     suffixes=None, what="--report")
    config = generation_settings(args)  # bad settings: typed errors before the model loads
    from engine.pipeline.sdk import check_encode_preset

    check_encode_preset(args.encode_preset)
    from engine.media.gpu_video import resolve_video_io

    video_io = resolve_video_io(args.video_io, args.device)  # no [gpu-video] or no CUDA: typed error, no model load
    sync = load_sync(args)
    with progress_bar(desc="lip-sync", unit="frame", enabled=not args.no_progress) as bar:
        result = sync.run(args.video, checked.samples, str(checked.output), config=config,
                          strict_faces=args.strict_faces, crf=args.crf, progress=bar.callback, length=args.length,
                          encode_preset=args.encode_preset, output_audio=args.output_audio, audio_file=args.audio,
                          video_io=video_io)
    if args.report:
        write_report(result, args.report)
    print(result.summary())
    return 0
