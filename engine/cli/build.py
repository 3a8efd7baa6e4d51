"""`engine build`: TensorRT engines from the export specs (exports what is missing first).

The folder, profile (--frames/--batch), precision and typing are recorded in the folder and the folder is
registered for the model, so `engine run --backend auto` (or tensorrt) finds these engines as built.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    from engine.backends.config import EngineConfig
    from engine.cli.export import add_model_arguments

    defaults = EngineConfig()
    p = subparsers.add_parser("build", help="build TensorRT engines for a model", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--precision", default=defaults.precision, choices=["fp16", "bf16", "fp32"],
                   help="engine precision: the dtype the model is loaded and exported in")
    p.add_argument("--frames", type=int, default=defaults.frames, help="largest chunk (profile max frames; min is 1)")
    p.add_argument("--batch", type=int, default=defaults.batch, help="largest U-Net batch (2 with classifier-free guidance)")
    p.add_argument("--audio-batch", type=int, default=defaults.audio_batch,
                   help="largest number of 30 s whisper windows per call")
    p.add_argument("--typing", default=defaults.typing, choices=["strong", "weak"],
                   help="strong: precision from the graph, whose normalisations are fp32 (default); weak: builder "
                        "FP16/BF16 flags with fp32 constraints on normalisation layers (TensorRT 10)")
    p.add_argument("--no-fp32-norms", action="store_true",
                   help="let TensorRT run normalisation statistics in fp16/bf16 (faster, overflow risk)")
    p.add_argument("--no-build", action="store_true",
                   help="only check (re-reading every engine's bytes): raise IncompatibleEngineError listing what "
                        "differs instead of (re)building")
    p.add_argument("--timing-cache", help="timing cache to start from (ignored with a warning if from another TensorRT/GPU)")
    p.add_argument("--opt-level", type=int, default=defaults.opt_level, help="TensorRT builder optimisation level 0..5")
    p.add_argument("--workspace-gib", type=float, default=defaults.workspace_gib,
                   help="builder workspace limit (0: TensorRT default)")
    p.set_defaults(func=_run)


def build_config(args: argparse.Namespace):  # noqa: ANN201 - engine.backends.config.EngineConfig
    """The EngineConfig `engine build`'s arguments describe (what `run` must resolve to find the engines)."""
    from engine.backends.config import EngineConfig

    return EngineConfig(precision=args.precision, frames=args.frames, batch=args.batch, audio_batch=args.audio_batch,
                        opt_level=args.opt_level, workspace_gib=args.workspace_gib, typing=args.typing,
                        fp32_norms=not args.no_fp32_norms, allow_build=not args.no_build)


def _run(args: argparse.Namespace) -> int:
    import torch

    from engine.backends.config import register_artifacts
    from engine.backends.select import GROUP_OF
    from engine.cli.export import load_for_export, parse_networks
    from engine.errors import BackendUnavailableError
    from export.engines import ensure_engine
    from export.onnx_export import current_onnx
    from export.trt_env import detect_environment

    networks = parse_networks(args.networks)
    config = build_config(args)
    try:
        env = detect_environment()  # BackendUnavailableError before any model is loaded
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f'{exc}. TensorRT engines need an NVIDIA GPU and the [trt] extra (pip install -e ".[trt]"); without '
            f"them, `engine export --model {args.model}` writes ONNX files that `engine run --backend onnxruntime` "
            "runs") from exc
    if args.device == "auto":
        args.device = "cuda"
    models, ctx, modules = load_for_export(args, args.precision, config)
    report = {"environment": env.fields(), "out": str(ctx.artifact_dir), "profile": config.profile(), "engines": {}}
    for network in networks:
        module = modules[network]
        onnx_path = current_onnx(network, module, ctx.artifact_dir, allow_export=not args.no_build,
                                 weights_hash=ctx.weights_key(GROUP_OF[network]))
        engine = ensure_engine(network, onnx_path, ctx.artifact_dir, geometry=ctx.geometry, shape=ctx.build_shape(),
                               settings=ctx.build_settings(network), env=env, no_build=args.no_build,
                               verify_sha256=args.no_build, timing_cache=args.timing_cache)
        report["engines"][network] = str(engine)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not args.no_build and not args.no_register:
        register_artifacts(models.name, ctx.artifact_dir, written_by="engine build", section="tensorrt",
                           values={**config.profile(), "networks": sorted(report["engines"])})
    print(json.dumps(report, indent=2))
    return 0
