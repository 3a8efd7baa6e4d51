"""`engine eval`: measure lip-sync (SyncNet LSE-C/LSE-D, StableSyncNet) and fidelity of a produced video,
or (`--sweep`) make a clip under many settings and tabulate time against quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import InvalidInputError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score lip-sync and fidelity of a produced video (or sweep settings)",
                              description=__doc__)  # fmt: skip
    p.add_argument("--video", required=True, help="the lip-synced video to score (25 fps); with --sweep: the input")
    p.add_argument("--audio", help="the driving speech (default: the video's own audio track)")
    p.add_argument("--reference", help="a reference run of the same clip: adds PSNR / SSIM / flicker")
    p.add_argument("--json", help="also write the report as JSON to this file")
    faces = p.add_mutually_exclusive_group()
    faces.add_argument("--face", help="optional (default auto, as `engine run`): auto | insightface | mediapipe | "
                                      "mediapipe-static | a face-track file (latentsync-face-track JSON) | a box list "
                                      "JSON ({'boxes': [[x1,y1,x2,y2] or null, ...]}); --sweep: a detector or a "
                                      "face-track file")
    faces.add_argument("--box", help="instead of --face: one fixed face box for every frame, x1,y1,x2,y2 "
                                     "(not with --sweep)")
    p.add_argument("--syncnet-weights", help="SyncNet S checkpoint (default: download syncnet_v2.model, hash-checked)")
    p.add_argument("--no-syncnet", action="store_true", help="skip LSE-C / LSE-D")
    p.add_argument("--stable-syncnet-weights", help="StableSyncNet checkpoint; enables the StableSyncNet score")
    p.add_argument("--stable", action="store_true", help="StableSyncNet score with the downloaded stable_syncnet.pt")
    p.add_argument("--random-weights", action="store_true",
                   help="random networks (seeded): exercises the whole path, scores are meaningless")
    p.add_argument("--vshift", type=int, default=15, help="offset search range in frames (official 15)")
    p.add_argument("--batch-size", type=int, default=20, help="SyncNet windows per batch (official 20)")
    p.add_argument("--stable-stride", type=int, default=16, help="frames between StableSyncNet windows")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (the slowest fidelity metric)")
    p.add_argument("--device", default=None, help="cpu | cuda[:N] (default: CUDA when present)")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (use cached weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep = p.add_argument_group("sweep", "make the clip under many settings; time and score each")
    sweep.add_argument("--sweep", action="store_true", help="run a settings sweep on --video (the input clip)")
    sweep.add_argument("--model", default="latentsync-1.6", help="latentsync-1.6 | latentsync-1.5 | a local "
                                                                  "directory | tiny-random (numbers meaningless)")
    sweep.add_argument("--dtype", help="fp32 | fp16 | bf16 (default: the device's)")
    sweep.add_argument("--out", help="folder for the table and the runs' videos (default: sweep-<video name>)")
    sweep.add_argument("--baseline", default="reference",
                       help="the setting every row's fidelity is measured against (default: the reference preset)")
    sweep.add_argument("--settings", nargs="+", metavar="SETTING",
                       help="settings after the baseline, e.g. fast steps=5 deepcache=off fast+deepcache=2 live=120 "
                            "backend=onnxruntime; parts joined by '+' (keys: preset steps guidance deepcache seed "
                            "live chunk backend). Default: fast, 5 steps, DeepCache off/2/5, live 0/120/240 ms, "
                            "each accelerated backend")
    sweep.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median reported)")
    sweep.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                       help="an untimed one-chunk run of each setting right before timing it, so no row pays "
                            "first-call costs for the others (default on)")
    sweep.add_argument("--no-plot", action="store_true",
                       help="no sweep.png (the plot needs matplotlib: the [plot] extra)")
    p.set_defaults(func=_eval)


def summary(report: dict) -> str:
    """The printed result; every score says how many frames it came from."""
    face_frames = sum(stop - start for start, stop in report["face_tracks"])
    lines = [f"video {report['video']}: {report['frames']} frames, {face_frames} with a face in "
             f"{len(report['face_tracks'])} track(s) {report['face_tracks']}"]
    if report["random_weights"]:
        lines.append("WARNING: random network weights: sync scores are meaningless")
    if report["lse"]:
        lse = report["lse"]
        frames = sum(t["stop"] - t["start"] for t in lse["tracks"])
        windows = sum(t["n_windows"] for t in lse["tracks"])
        lines.append(f"SyncNet  LSE-C {lse['lse_c']:.4f}  LSE-D {lse['lse_d']:.4f}  "
                     f"AV offset {lse['av_offset']} frames  (mouths of {frames} frames, {windows} windows)")
    if report["stable"]:
        st = report["stable"]
        lines.append(f"StableSyncNet  mean {st['mean_prob']:.4f}  in sync {100 * st['frac_in_sync']:.1f}% "
                     f"of {st['n_windows']} windows of 16 frames ({st['n_windows'] * 16} frames, "
                     f"{st['face_crop']} faces)")
    if report["fidelity"]:
        fd = report["fidelity"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"vs reference  PSNR {fmt(fd['psnr_frame'])} dB (mouth {fmt(fd['psnr_mouth'])})  "
                     f"SSIM {fmt(fd['ssim_frame'])} (mouth {fmt(fd['ssim_mouth'])})  "
                     f"flicker {fmt(fd['flicker_mouth'])} (reference {fmt(fd['flicker_mouth_reference'])})  "
                     f"(frames {fd['frames']}, mouth region in {fd['mouth_frames']})")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from engine.eval.inputs import face_boxes, finite_json, load_networks
    from engine.eval.report import evaluate_clip
    from engine.media import probe

    from engine.cli.progress import progress_bar

    audio = args.audio or args.video
    if args.sweep:
        return _sweep(args, audio)
    probe(args.video, require_video=True)  # cheap typed failures (no stream, limits) before models load
    probe(audio, require_audio=True)
    if args.json:
        from engine.media.paths import check_output

        check_output(args.json, inputs=(("--video", args.video), ("--audio", audio), ("--reference", args.reference)),
                     suffixes=None, what="--json")
    if args.reference is not None:
        import logging

        from engine.eval.reference_match import reference_mismatch

        probe(args.reference, require_video=True)
        why = reference_mismatch(args.video, args.reference)
        if why:  # PSNR / SSIM against another clip measure nothing: say so, the user may still want them
            logging.getLogger("engine.eval").warning(
                "--reference %s does not look like a run of the same input as --video %s: it has %s; its PSNR / "
                "SSIM / flicker compare different clips", args.reference, args.video, why)
    networks = load_networks(**_network_args(args))
    with progress_bar(desc="eval: faces", unit="frame", enabled=not args.no_progress) as bar:
        boxes, landmarks = face_boxes(args.face, args.box, args.video, progress=bar.callback)
    with progress_bar(desc="eval", unit="item", enabled=not args.no_progress) as bar:
        stage = None

        def progress(name: str, done: int, total: int) -> None:
            nonlocal stage
            if name != stage:  # a new stage: frames, then SyncNet / StableSyncNet windows
                stage = name
                bar.restart(f"eval: {name}", total)
            bar.callback(done, total)

        report = evaluate_clip(args.video, audio, boxes, networks, landmarks=landmarks, reference=args.reference,
                               options=_eval_options(args), progress=progress).to_dict()  # fmt: skip
    report = finite_json(report)
    print(summary(report))
    if args.json:
        from engine.weights.checkpoints import atomic_write

        text = json.dumps(report, indent=1)  # atomic; a full disk is an OutputWriteError
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    return 0


def _network_args(args: argparse.Namespace) -> dict:
    return dict(syncnet=not args.no_syncnet, syncnet_weights=args.syncnet_weights, stable=args.stable,
                stable_weights=args.stable_syncnet_weights, random_weights=args.random_weights,
                offline=args.offline, device=args.device or _default_device())  # fmt: skip


def _eval_options(args: argparse.Namespace):
    from engine.eval.report import EvalOptions

    return EvalOptions(vshift=args.vshift, batch_size=args.batch_size, stable_stride=args.stable_stride,
                       compute_ssim=not args.no_ssim)  # fmt: skip


def _sweep(args: argparse.Namespace, audio: str) -> int:
    from engine.eval.inputs import load_networks
    from engine.eval.sweep import SweepOptions, run_sweep
    from engine.eval.sweep_settings import plan_settings

    if args.box is not None or args.reference is not None:
        raise InvalidInputError("eval --sweep: expected --face (the pipeline needs landmarks) and no --reference "
                                "(the baseline row is the reference), found --box or --reference")
    from engine.cli.progress import progress_bar

    options = SweepOptions(
        model=args.model, device=args.device, dtype=args.dtype, face=args.face or "auto", baseline=args.baseline,
        settings=tuple(args.settings) if args.settings else None, repeats=args.repeats, warmup=args.warmup,
        offline=args.offline, eval=_eval_options(args), plot=not args.no_plot,
    )  # fmt: skip
    if options.plot:
        from engine.extras import require

        require("plot", what="eval --sweep's quality-vs-speed plot (or --no-plot)")
    plan_settings(options.baseline, list(options.settings or ()))  # bad settings: typed errors before any work
    _check_sweep_outputs(Path(args.out or f"sweep-{Path(args.video).stem}"), (("--video", args.video), ("--audio", audio)))
    networks = load_networks(**_network_args(args))
    out = Path(args.out or f"sweep-{Path(args.video).stem}")
    with progress_bar(desc="sweep", unit="frame", enabled=not args.no_progress) as bar:

        def progress(label: str, done: int, total: int) -> None:
            bar.describe(label)
            bar.callback(done, total)

        table = run_sweep(args.video, audio, out, networks, options, progress=progress)
    print(_sweep_summary(table, out, options.plot))
    return 0


def _check_sweep_outputs(out: Path, inputs) -> None:
    """Refuse before any work when a file the sweep writes (table files, runs/) would be one of its inputs."""
    from engine.eval.sweep_table import FILES
    from engine.media.paths import check_not_input, check_output_dir

    check_output_dir(out, what="eval --sweep --out")
    for name in FILES.values():
        check_not_input(out / name, inputs, what="eval --sweep output")
    check_not_input(out / "runs", inputs, what="eval --sweep runs folder", directory=True)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sweep_summary(table, out: Path, plot: bool = True) -> str:
    from engine.eval.sweep_table import FILES, to_markdown, table_json

    text = to_markdown(table_json(table))
    files = ", ".join(str(out / name) for kind, name in FILES.items() if plot or kind != "png")
    return f"{text}\nwrote {files}" + (f"\nWARNING: {table.warning}" if table.warning else "")
