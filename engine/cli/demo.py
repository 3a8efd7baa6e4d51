"""`engine demo`: the lip-synced avatar live in a browser, over WebRTC, on this machine (no LLM, no cloud)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.options import add_generation_options, add_model_options

DEMO_CLIP = Path(__file__).resolve().parents[2] / "examples" / "media" / "demo1_video.mp4"
DESCRIPTION = """\
Serve Pipecat's prebuilt WebRTC client page and a local Pipecat bot whose video is the lip-synced avatar.
Open the printed address in a browser and press Connect. With --speech FILE the bot reads that file aloud
in a loop; without it, it speaks back what your microphone said once you stop talking. tiny-random (the
default model) has random weights: its mouth region is noise, but the whole path runs offline on a CPU;
use --model latentsync-1.6 --device cuda for a real avatar. Needs the [webrtc] extra.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the lip-synced avatar live in a browser (WebRTC)",
                              description=DESCRIPTION)
    p.add_argument("--source", default=str(DEMO_CLIP),
                   help="face video or avatar directory (engine avatar prepare); default: the bundled demo clip")
    p.add_argument("--speech", default=None,
                   help="a WAV/MP3 (any audio file) read aloud in a loop; default: echo the microphone")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--max-height", type=int, default=480,
                   help="scale a taller source video down to this height before streaming (0: keep its size)")
    p.add_argument("--chunk-frames", type=int, default=16, choices=[8, 12, 16], help="live chunk size in frames")
    add_model_options(p)
    add_generation_options(p)
    for action in p._actions:  # the shared --model option, with this command's default
        if action.dest == "model":
            action.help = "tiny-random (default: random weights, runs on a CPU), latentsync-1.6, latentsync-1.5 " \
                          "or a local directory"
    p.set_defaults(func=_run, model="tiny-random")


def demo_source(source: str, max_height: int, face: str):
    """(source for the session, (width, height)): an avatar directory as it is; a video decoded and scaled to
    at most `max_height` rows (even sizes), or left as a path when it is short enough already."""
    from engine.errors import InvalidInputError, expect
    from engine.integrations.bridge import source_size

    path = Path(source)
    expect(path.exists(), InvalidInputError, "demo --source", "a face video or an avatar directory", source)
    width, height = source_size(path)
    expect(max_height >= 0, InvalidInputError, "demo --max-height", ">= 0", max_height)
    if path.is_dir() or max_height == 0 or height <= max_height:
        return str(path), (width, height)
    expect(not Path(face).is_file(), InvalidInputError, "demo --face",
           "a face source that detects faces when the video is scaled (or --max-height 0 with a face-track file)",
           face)
    import cv2
    import numpy as np

    from engine.media.video import iter_video_frames

    scale = max_height / height
    size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
    frames = np.stack([cv2.resize(f.rgb, size, interpolation=cv2.INTER_AREA) for f in iter_video_frames(path)])
    return frames, size  # frames [T,H,W,3] uint8


def _run(args: argparse.Namespace) -> int:
    from engine.cli.options import generation_settings, load_sync
    from engine.extras import require
    from engine.stream import StreamConfig

    require("webrtc", what="engine demo")
    speech = None
    if args.speech:
        from engine.media.audio import load_pcm16

        speech = load_pcm16(args.speech)  # int16 [n] at 16 kHz, checked before the model loads
    source, size = demo_source(args.source, args.max_height, args.face)
    sync = load_sync(args)
    config = StreamConfig(mode="live", chunk_frames=args.chunk_frames, sync=generation_settings(args))
    from engine.integrations.webrtc_demo import DemoBot, serve

    serve(DemoBot(sync=sync, source=source, size=size, config=config, speech=speech), host=args.host, port=args.port)
    return 0
