"""`engine bench`: per-network latency and throughput of every available backend, vs eager PyTorch."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from engine.cli.export import ALL_NETWORKS

    p = subparsers.add_parser("bench", help="benchmark backends per network", description=__doc__)
    p.add_argument("--model", default="tiny-random", help="model name or directory, as `engine run --model`")
    p.add_argument("--backends", default="torch,compile,onnxruntime,tensorrt",
                   help="comma-separated; unavailable ones are reported with the reason")
    p.add_argument("--networks", default=",".join(ALL_NETWORKS), help="comma-separated network specs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16")
    p.add_argument("--batch", type=int, default=2, help="U-Net batch (2 = classifier-free guidance)")
    p.add_argument("--frames", type=int, default=16, help="frames per chunk (U-Net frames, VAE images)")
    p.add_argument("--iters", type=int, default=5, help="timed calls per network and backend (median reported)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls after the first (the first call is timed apart: export, compile, capture)")
    p.add_argument("--artifacts", help="artifact folder for ONNX files / engines (default: <engine cache>/bench-artifacts/"
                                       "<model>, which `engine run` never uses unasked)")
    p.add_argument("--out", help="JSON output, PNG beside it (default: <engine cache>/bench/backends.json; nothing is"
                                 " written into the working directory unless --out says so)")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")
    p.add_argument("--no-plot", action="store_true", help="no PNG (the plot needs matplotlib: the [plot] extra)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def default_bench_out():  # noqa: ANN201 - Path
    """Where `engine bench` writes without --out: the engine cache, never the working directory."""
    from engine.weights import engine_cache_dir

    return engine_cache_dir() / "bench" / "backends.json"


def _run(args: argparse.Namespace) -> int:
    from engine.backends.bench import BenchSettings, bench_networks, format_table, skipped_summary, write_results
    from engine.backends.config import EngineConfig, bench_artifact_dir
    from engine.backends.select import BACKENDS, BackendContext
    from engine.cli.export import parse_networks
    from engine.cli.progress import progress_bar
    from engine.errors import InvalidInputError, expect
    from engine.extras import require
    from engine.pipeline.device import apply_device_options, choose_placement
    from engine.weights import load_models
    from export.specs import ShapeSettings

    if not args.no_plot:
        require("plot", what="engine bench's plot (or --no-plot)")
    networks = parse_networks(args.networks)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    expect(all(b in BACKENDS for b in backends), InvalidInputError, "--backends", BACKENDS, args.backends)
    placement = choose_placement(args.device, args.dtype)
    models = load_models(args.model, device=placement.device, dtype=placement.dtype, offline=args.offline)
    apply_device_options(models, placement.device, placement.dtype)  # as a run has them (whisper dtype on CUDA)
    artifacts = args.artifacts or bench_artifact_dir(models.name)  # never registered: `run` does not pick these up
    ctx = BackendContext.of(models, placement.device, EngineConfig(artifact_dir=artifacts))
    latent = models.resolution // 8
    unet_shape = ShapeSettings(batch=args.batch, frames=args.frames, height=latent, width=latent)
    shapes = {"unet": unet_shape, "unet_shallow": unet_shape,
              "vae_encoder": ShapeSettings(batch=args.frames, height=latent, width=latent),
              "vae_decoder": ShapeSettings(batch=args.frames, height=latent, width=latent),
              "audio_encoder": ShapeSettings(batch=1)}
    rows = []
    with progress_bar(total=len(networks), desc="bench", unit="network", enabled=not args.no_progress) as bar:
        for network in networks:  # one network at a time: the bar moves, results are the same
            bar.describe(f"bench {network}")
            rows += bench_networks(ctx, [network], backends, shapes,
                                   BenchSettings(warmup=args.warmup, iters=args.iters), label=models.name)
            bar.update()
    out = write_results(rows, args.out or default_bench_out(), extra={"settings": vars(args) | {"func": None}}, plot=not args.no_plot)
    print(format_table(rows))
    for line in skipped_summary(rows):
        print(f"not run: {line}")
    print(f"wrote {out}")
    return 0
