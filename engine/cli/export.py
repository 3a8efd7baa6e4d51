"""`engine export`: write the ONNX graphs of a model (no TensorRT needed), one file per network spec."""

from __future__ import annotations

import argparse
import json

ALL_NETWORKS = ("unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model / --out / --networks / --device / --offline, shared by `engine export` and `engine build`."""
    p.add_argument("--model", default="latentsync-1.6",
                   help="latentsync-1.6 | latentsync-1.5 | tiny-random | a local model directory (as `engine run`)")
    p.add_argument("--out", help="artifact folder (default: <engine cache>/artifacts/<model>)")
    p.add_argument("--networks", default=",".join(ALL_NETWORKS), help=f"comma-separated subset of {','.join(ALL_NETWORKS)}")
    p.add_argument("--device", default="auto", help="device to trace on: auto | cpu | cuda[:N]")
    p.add_argument("--offline", action="store_true", help="never contact the model hub")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export ONNX graphs of a model", description=__doc__)
    add_model_arguments(p)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"],
                   help="graph dtype of U-Net and VAE (the whisper encoder is always fp32)")
    p.add_argument("--force", action="store_true", help="re-export even when the existing file is current")
    p.set_defaults(func=_run)


def parse_networks(text: str) -> list[str]:
    from engine.errors import InvalidInputError, expect

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_NETWORKS]
    expect(names and not unknown, InvalidInputError, "--networks", f"names from {ALL_NETWORKS}", text)
    return names


def load_for_export(args: argparse.Namespace, dtype_name: str):
    """(LoadedModels, artifact dir, network -> module) for the arguments of export/build."""
    from pathlib import Path

    from engine.backends.select import default_artifact_dir
    from engine.pipeline.device import choose_placement
    from engine.weights import load_models

    placement = choose_placement(args.device, dtype_name)
    models = load_models(args.model, device=placement.device, dtype=placement.dtype, offline=args.offline)
    modules = {"unet": models.unet, "unet_shallow": models.unet, "vae_encoder": models.vae,
               "vae_decoder": models.vae, "audio_encoder": models.audio_encoder}
    return models, Path(args.out) if args.out else default_artifact_dir(models.name), modules


def _run(args: argparse.Namespace) -> int:
    from export.onnx_export import ensure_onnx, export_onnx

    networks = parse_networks(args.networks)  # before loading anything
    _, out_dir, modules = load_for_export(args, args.dtype)
    written = {}
    for network in networks:
        export = export_onnx if args.force else ensure_onnx
        written[network] = str(export(network, modules[network], out_dir))
    print(json.dumps(written, indent=2))
    return 0
