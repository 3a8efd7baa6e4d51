"""`engine build`: TensorRT engines from the export specs (exports what is missing first)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from engine.cli.export import add_model_arguments
    from export.specs import BuildShape

    p = subparsers.add_parser("build", help="build TensorRT engines for a model", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--precision", default="fp16", choices=["fp16", "fp32"], help="engine precision")
    p.add_argument("--frames", type=int, default=16, help="largest chunk (profile max frames; min is 1)")
    p.add_argument("--batch", type=int, default=2, help="largest U-Net batch (2 with classifier-free guidance)")
    p.add_argument("--audio-batch", type=int, default=BuildShape.audio_batch, help="largest number of 30 s whisper windows per call")
    p.add_argument("--no-build", action="store_true",
                   help="only check: raise IncompatibleEngineError listing what differs instead of (re)building")
    p.add_argument("--timing-cache", help="timing cache to start from (ignored with a warning if from another TensorRT/GPU)")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation level 0..5")
    p.add_argument("--workspace-gib", type=float, default=0.0, help="builder workspace limit (0: TensorRT default)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from engine.cli.export import load_for_export, parse_networks
    from engine.errors import BackendUnavailableError
    from export.engines import ensure_engine
    from export.onnx_export import current_onnx
    from export.specs import BuildShape
    from export.trt_builder import BuildSettings
    from export.trt_env import detect_environment
    from export.wrappers import geometry_for_network

    networks = parse_networks(args.networks)
    settings = BuildSettings(precision=args.precision, optimization_level=args.opt_level, workspace_gib=args.workspace_gib)
    try:
        env = detect_environment()  # BackendUnavailableError before any model is loaded
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f'{exc}. TensorRT engines need an NVIDIA GPU and the [trt] extra (pip install -e ".[trt]"); without '
            f"them, `engine export --model {args.model}` writes ONNX files that `engine run --backend onnxruntime` "
            "runs") from exc
    if args.device == "auto":
        args.device = "cuda"
    models, out_dir, modules = load_for_export(args, "fp16" if args.precision == "fp16" else "fp32")
    shape = BuildShape(batch=args.batch, frames=args.frames, latent_size=models.resolution // 8,
                       audio_batch=args.audio_batch)
    report = {"environment": env.fields(), "out": str(out_dir), "engines": {}}
    for network in networks:
        module = modules[network]
        onnx_path = current_onnx(network, module, out_dir, allow_export=not args.no_build)
        engine = ensure_engine(network, onnx_path, out_dir, geometry=geometry_for_network(network, module), shape=shape,
                               settings=settings, env=env, no_build=args.no_build,
                               timing_cache=args.timing_cache)
        report["engines"][network] = str(engine)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))
    return 0
