"""`engine export`: write the ONNX graphs of a model (no TensorRT needed), one file per network spec."""

from __future__ import annotations

import argparse
import dataclasses
import json

ALL_NETWORKS = ("unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model / --out / --networks / --device / --offline, shared by `engine export` and `engine build`."""
    p.add_argument("--model", default="latentsync-1.6",
                   help="latentsync-1.6 | latentsync-1.5 | tiny-random | a local model directory (as `engine run`)")
    p.add_argument("--out", "--artifacts", dest="out", metavar="DIR",
                   help="artifact folder (default: <engine cache>/artifacts/<model>); registered for the model, so"
                        " `engine run` finds it (--no-register: not)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register the folder: `engine run --backend auto` then ignores it unless given --artifacts")
    p.add_argument("--networks", default=",".join(ALL_NETWORKS), help=f"comma-separated subset of {','.join(ALL_NETWORKS)}")
    p.add_argument("--device", default="auto", help="device to trace on: auto | cpu | cuda[:N]")
    p.add_argument("--offline", action="store_true", help="never contact the model hub")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export ONNX graphs of a model", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="graph dtype of U-Net and VAE (bf16: TensorRT only); the whisper encoder follows it on CUDA"
                        " (as runs do) and is fp32 on the CPU")
    p.add_argument("--force", action="store_true", help="re-export even when the existing file is current")
    p.set_defaults(func=_run)


def parse_networks(text: str) -> list[str]:
    from engine.errors import InvalidInputError, expect

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_NETWORKS]
    expect(names and not unknown, InvalidInputError, "--networks", f"names from {ALL_NETWORKS}", text)
    return names


def load_for_export(args: argparse.Namespace, dtype_name: str, config=None):  # noqa: ANN001, ANN201
    """(LoadedModels, BackendContext, network -> module) for the arguments of export/build.

    The context keys every file by the checkpoints' digests, exactly as `engine run` will look them up.
    """
    from pathlib import Path

    from engine.audio.whisper import follow_run_dtype
    from engine.backends.config import EngineConfig, default_artifact_dir
    from engine.backends.select import BackendContext
    from engine.pipeline.device import choose_placement
    from engine.weights import load_models

    if args.out and Path(args.model).expanduser().exists():  # a local model folder is an input, never the output
        from engine.media.paths import check_output_dir

        check_output_dir(args.out, inputs=(("--model", args.model),), what="--out")
    placement = choose_placement(args.device, dtype_name)
    models = load_models(args.model, device=placement.device, dtype=placement.dtype, offline=args.offline)
    follow_run_dtype(models.audio_encoder, placement.device, placement.dtype)  # the graph a run there looks up
    modules = {"unet": models.unet, "unet_shallow": models.unet, "vae_encoder": models.vae,
               "vae_decoder": models.vae, "audio_encoder": models.audio_encoder}
    out_dir = Path(args.out).expanduser() if args.out else default_artifact_dir(models.name)
    ctx = BackendContext.of(models, placement.device, dataclasses.replace(config or EngineConfig(), artifact_dir=out_dir))
    return models, ctx, modules


def _run(args: argparse.Namespace) -> int:
    from engine.backends.config import register_artifacts
    from engine.backends.select import GROUP_OF
    from export.onnx_export import ensure_onnx, export_onnx

    networks = parse_networks(args.networks)  # before loading anything
    models, ctx, modules = load_for_export(args, args.dtype)
    written = {}
    for network in networks:
        export = export_onnx if args.force else ensure_onnx
        written[network] = str(export(network, modules[network], ctx.artifact_dir,
                                      weights_hash=ctx.weights_key(GROUP_OF[network])))
    if not args.no_register:
        register_artifacts(models.name, ctx.artifact_dir, written_by="engine export", section="onnx",
                           values={"dtype": args.dtype, "networks": sorted(written)})
    print(json.dumps(written, indent=2))
    return 0
