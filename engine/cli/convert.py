"""`engine convert`: rewrite a model (hub name, folder, tiny-random) as a pickle-free safetensors folder."""

from __future__ import annotations

import argparse

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a model as safetensors (unet, vae, whisper encoder) + configs",
        description="Load a model strictly (hub name, local folder or tiny-random) and write it as a folder of "
        "safetensors files that `--model DIR` loads again, without any pickle.",
    )
    parser.add_argument("--model", required=True, help="latentsync-1.6 | latentsync-1.5 | tiny-random | a directory")
    parser.add_argument("--out", required=True, help="output directory (must be new or empty unless --overwrite)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast U-Net and VAE weights (default: keep the stored dtype)")
    parser.add_argument("--resolution", type=int, choices=(256, 512), default=None,
                        help="face resolution to record (needed for a bare folder without engine.json)")
    parser.add_argument("--offline", action="store_true", help="never download; use the Hugging Face cache only")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache (or tiny-random root) to use")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from engine.weights.convert import convert_model

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    out = convert_model(args.model, args.out, dtype=dtype, offline=args.offline, resolution=args.resolution,
                        cache_dir=args.cache_dir, overwrite=args.overwrite)
    print(out)
    return 0
