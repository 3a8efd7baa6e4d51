"""Backend comparison on this machine: torch vs compile vs onnxruntime (vs tensorrt on GPU) per network.

CPU preset: the tiny-random model and the official-size U-Net at 256 px (32x32 latents, random weights),
batch 1 x 4 frames so it finishes on a laptop. Writes benchmarks/results/backends.json and .png.

    python benchmarks/backends.py [--iters 3] [--skip-official] [--backends torch,compile,onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from engine.backends.bench import BenchSettings, bench_networks, format_table, write_results
from engine.backends.select import BackendContext, BackendOptions
from export.specs import ShapeSettings

RESULTS = Path(__file__).resolve().parent / "results"
OFFICIAL_256_LATENT = 32  # 256 px / 8


def official_256_unet(device: torch.device) -> torch.nn.Module:
    """The official LatentSync U-Net architecture with random weights (zero-init heads re-randomised)."""
    from engine.models import LatentSyncUNet, official_unet_config

    torch.manual_seed(0)
    unet = LatentSyncUNet.from_config(official_unet_config())
    for conv in (unet.conv_in, unet.conv_out):
        torch.nn.init.normal_(conv.weight, std=0.02)
    return unet.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,compile,onnxruntime,tensorrt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--skip-official", action="store_true", help="only the tiny model")
    parser.add_argument("--skip-tiny", action="store_true", help="only the official-size U-Net")
    parser.add_argument("--networks", default="unet,unet_shallow,vae_encoder,vae_decoder,audio_encoder",
                        help="tiny-model networks to time")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (same model/network/backend rows are replaced)")
    parser.add_argument("--artifacts", default=str(RESULTS / "artifacts"), help="ONNX files / engines made here")
    parser.add_argument("--out", default=str(RESULTS / "backends.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from engine.weights import load_models

    device = torch.device(args.device)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    settings = BenchSettings(warmup=args.warmup, iters=args.iters)
    rows = []

    tiny = load_models("tiny-random", device=device)
    if not args.skip_tiny:
        latent = tiny.resolution // 8
        ctx = BackendContext.of(tiny, device, BackendOptions(artifact_dir=Path(args.artifacts) / "tiny-random"))
        unet_shape = ShapeSettings(batch=args.batch, frames=args.frames, height=latent, width=latent)
        image_shape = ShapeSettings(batch=args.frames, height=latent, width=latent)
        shapes = {"unet": unet_shape, "unet_shallow": unet_shape, "vae_encoder": image_shape,
                  "vae_decoder": image_shape, "audio_encoder": ShapeSettings(batch=1)}
        networks = [n.strip() for n in args.networks.split(",") if n.strip()]
        rows += bench_networks(ctx, networks, backends, shapes, settings, label="tiny-random")

    if not args.skip_official:
        modules = {"unet": official_256_unet(device), "vae": tiny.vae, "audio": tiny.audio_encoder}
        ctx = BackendContext(modules, name="official-256-random", resolution=256, device=device,
                             options=BackendOptions(artifact_dir=Path(args.artifacts) / "official-256"))
        shape = ShapeSettings(batch=args.batch, frames=args.frames, height=OFFICIAL_256_LATENT, width=OFFICIAL_256_LATENT)
        rows += bench_networks(ctx, ["unet"], backends, {"unet": shape}, settings, label="official-256 (random)")

    if args.append and Path(args.out).exists():
        key = lambda r: (r["model"], r["network"], r["backend"])  # noqa: E731
        new = {key(r) for r in rows}
        rows = [r for r in json.loads(Path(args.out).read_text())["results"] if key(r) not in new] + rows
    out = write_results(rows, Path(args.out), extra={"settings": vars(args)})
    print(format_table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
