"""Command-line options shared by the commands that load a model (`run`, `batch`, `avatar prepare`, `serve`).

One definition per flag keeps their names, defaults and help the same everywhere, and equal to the SDK's
(`LipSync.from_pretrained`): an option added here reaches every front end at once.
"""

from __future__ import annotations

import argparse

MODEL_HELP = "latentsync-1.6 (512 px, default), latentsync-1.5 (256 px), a local directory, or tiny-random"
BACKEND_HELP = ("auto (eager torch, or the built artifacts `engine export`/`build` registered or --artifacts names;"
                " logs its choice) | torch | compile | onnxruntime | tensorrt, or per network:"
                " unet=tensorrt,vae=torch,audio=torch")
FACE_HELP = ("face source: auto | insightface | mediapipe (tracks, as mediapipe's video mode) | "
             "mediapipe-static (detects every frame) | path to a face-track JSON")


def add_model_options(p, *, device_help: str = "auto | cpu | cuda[:N]") -> None:
    """Model, placement, backend and face options (`p`: a parser or an argument group)."""
    from engine.backends.config import add_artifacts_argument

    p.add_argument("--model", default="latentsync-1.6", help=MODEL_HELP)
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--backend", default="auto", help=BACKEND_HELP)
    add_artifacts_argument(p)
    p.add_argument("--face", default="auto", help=FACE_HELP)
    p.add_argument("--offline", action="store_true", help="never contact the network (use cached weights and face models)")


def add_generation_options(p) -> None:
    """The preset and its overrides (`p`: a parser or an argument group)."""
    p.add_argument("--preset", default="reference", choices=["reference", "fast"],
                   help="reference = official settings (20 steps, guidance 1.5, DeepCache 3, seed 1247)")
    p.add_argument("--steps", type=int, help="DDIM steps (overrides the preset)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale; <= 1 disables CFG")
    p.add_argument("--deepcache", type=int, help="DeepCache interval; 0 disables it")
    p.add_argument("--seed", type=int, help="random seed (default 1247, the official one)")


def add_length_option(p) -> None:
    """`--length` (engine run, engine batch): how long the output video is."""
    from engine.pipeline.config import DEFAULT_LENGTH, LENGTH_POLICIES

    p.add_argument("--length", default=DEFAULT_LENGTH, choices=list(LENGTH_POLICIES),
                   help="output length: audio = as long as the speech (default), official = N//2+2 frames "
                        "(80 ms longer, as the official pipeline)")


def add_output_audio_option(p) -> None:
    """`--output-audio` (engine run, engine batch): which audio the output carries."""
    from engine.pipeline.config import DEFAULT_OUTPUT_AUDIO, OUTPUT_AUDIO

    p.add_argument("--output-audio", default=DEFAULT_OUTPUT_AUDIO, choices=list(OUTPUT_AUDIO),
                   help="source = the speech file's own audio, at its sample rate and channels (default); model = "
                        "the 16 kHz mono signal the model hears (the output of earlier versions)")


def generation_settings(args: argparse.Namespace):
    """The SyncConfig that `add_generation_options` flags ask for."""
    from engine.pipeline.config import resolve_config

    return resolve_config(args.preset, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                          deepcache_interval=args.deepcache or None, deepcache_off=args.deepcache == 0)


def load_sync(args: argparse.Namespace, **kw):
    """`LipSync.from_pretrained` with the `add_model_options` flags (and the engine configuration they name)."""
    from engine.backends.config import engine_config_from_args
    from engine.pipeline.sdk import LipSync

    return LipSync.from_pretrained(args.model, device=args.device, dtype=args.dtype, face=args.face,
                                   backend=args.backend, offline=args.offline,
                                   engine=engine_config_from_args(args), **kw)
