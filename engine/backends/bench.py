"""Per-network latency and throughput of every available backend on the same inputs, vs eager PyTorch."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engine.backends.base import run_executor
from engine.backends.select import BACKENDS, BackendContext, make_executor, unavailable_reason
from engine.errors import BackendUnavailableError
from engine.extras import missing_module_error
from export.specs import ShapeSettings, get_spec
from export.wrappers import graph_dtype

log = logging.getLogger(__name__)

# Items a call processes, for throughput: frame-latents for the U-Net, images for the VAE, windows for whisper.
_ITEMS: dict[str, Callable[[ShapeSettings], int]] = {
    "unet": lambda s: s.batch * s.frames,
    "unet_shallow": lambda s: s.batch * s.frames,
    "vae_encoder": lambda s: s.batch,
    "vae_decoder": lambda s: s.batch,
    "audio_encoder": lambda s: s.batch,
}


@dataclass(frozen=True)
class BenchSettings:
    warmup: int = 1  # untimed calls after the first (the first is timed apart: compile / graph capture)
    iters: int = 3
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, settings: BenchSettings) -> dict[str, float]:
    """First-call seconds and per-call latency statistics (ms) of `fn`."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(settings.warmup):
        fn()
    samples = []
    for _ in range(settings.iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "first_call_s": round(first, 3),
        "mean_ms": round(statistics.fmean(samples), 2),
        "median_ms": round(statistics.median(samples), 2),
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
    }


def bench_networks(ctx: BackendContext, networks: list[str], backends: list[str], shapes: dict[str, ShapeSettings],
                   settings: BenchSettings = BenchSettings(), *, label: str = "") -> list[dict[str, Any]]:
    """One row per (network, backend): latency, throughput, speed-up vs torch and max |diff| vs torch outputs."""
    rows: list[dict[str, Any]] = []
    for network in networks:
        spec, shape = get_spec(network), shapes[network]
        dtype = graph_dtype(network, ctx.modules[_group(network)])  # whisper: its compute dtype (fp16 on CUDA)
        feeds = spec.sample_inputs(ctx.geometry, shape, dtype=dtype, device=ctx.device, seed=settings.seed)
        if network == "unet_shallow":  # a realistic cached feature: the full pass's output
            feeds["deep_feature"] = _torch_outputs(ctx, "unet", {k: v for k, v in feeds.items() if k != "deep_feature"})["deep_feature"]
        reference: dict[str, torch.Tensor] | None = None
        torch_ms: float | None = None
        for backend in backends:
            row: dict[str, Any] = {"model": label, "network": network, "backend": backend, "shape": asdict(shape),
                                   "device": str(ctx.device), "dtype": str(dtype).replace("torch.", "")}
            reason = unavailable_reason(backend, ctx.device)
            if reason is not None:
                rows.append(_skipped(row, reason))
                continue
            try:
                start = time.perf_counter()
                executor = make_executor(backend, network, ctx, allow_build=True)
                row["setup_s"] = round(time.perf_counter() - start, 2)
                outputs: dict[str, torch.Tensor] = {}

                def call() -> None:
                    outputs.update(run_executor(executor, feeds, dtype, ctx.device))

                row.update(time_calls(call, ctx.device, settings))
            except (BackendUnavailableError, ModuleNotFoundError) as exc:  # a missing package: skipped, with why
                error = missing_module_error(exc) if isinstance(exc, ModuleNotFoundError) else exc
                rows.append(_skipped(row, str(error or exc)))
                continue
            except Exception as exc:  # a benchmark reports a failing backend instead of stopping
                log.warning("bench %s on %s failed: %s", network, backend, exc)
                rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
                continue
            items = _ITEMS[network](shape)
            row["items_per_call"] = items
            row["throughput_items_per_s"] = round(items / (row["median_ms"] / 1e3), 3)
            if backend == "torch":
                reference, torch_ms = dict(outputs), row["median_ms"]
            if reference is not None:
                row["max_abs_diff_vs_torch"] = max(float((outputs[k].float() - reference[k].float()).abs().max())
                                                   for k in reference)
            if torch_ms:
                row["speedup_vs_torch"] = round(torch_ms / row["median_ms"], 3)
            log.info("%s %s %s: median %.1f ms (%s)", label, network, backend, row["median_ms"],
                     f"x{row.get('speedup_vs_torch', float('nan')):.2f} vs torch")
            rows.append(row)
    return rows


def _skipped(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """A row for a backend that cannot run here: kept in the JSON, the table and the plot, with the reason."""
    log.warning("bench %s on %s skipped: %s", row["network"], row["backend"], reason)
    return {**row, "skipped": reason}


def skipped_summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per backend that did not run (skipped or failed), with its first reason."""
    reasons: dict[str, str] = {}
    for r in rows:
        why = r.get("skipped") or r.get("error")
        if why and r["backend"] not in reasons:
            reasons[r["backend"]] = f"{'skipped' if r.get('skipped') else 'failed'}: {why}"
    return [f"{backend} {why}" for backend, why in reasons.items()]


def _group(network: str) -> str:
    from engine.backends.select import GROUP_OF

    return GROUP_OF[network]


def _torch_outputs(ctx: BackendContext, network: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    executor = make_executor("torch", network, ctx, allow_build=False)
    return executor(feeds)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(rows: list[dict[str, Any]], out: Path, *, extra: dict[str, Any] | None = None, plot: bool = True) -> Path:
    """JSON (and a PNG bar chart of speed-up vs torch when matplotlib is installed) beside it."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [Path(sys.executable).name, *sys.argv]
    out.write_text(json.dumps({"machine": machine_info(), "command": command, **(extra or {}), "results": rows},
                              indent=2) + "\n")
    if plot:
        _plot(rows, out.with_suffix(".png"))
    return out


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return
    timed = [r for r in rows if "median_ms" in r]
    cases = list(dict.fromkeys(f"{r['model']}\n{r['network']}" for r in timed))
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in timed)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    width = 0.8 / max(len(backends), 1)
    for i, backend in enumerate(backends):
        values = [next((r.get("speedup_vs_torch", 0) for r in timed
                        if f"{r['model']}\n{r['network']}" == c and r["backend"] == backend), 0) for c in cases]
        ax.bar([x + i * width for x in range(len(cases))], values, width, label=backend)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    notes = skipped_summary(rows)
    if notes:  # a backend that did not run is named on the plot, not just missing from it
        ax.set_title("not run: " + "; ".join(n[:90] for n in notes), fontsize=7, loc="left")
    ax.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(cases))], cases, fontsize=8)
    ax.set_ylabel("speed-up vs eager torch (median latency)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    lines = ["| model | network | backend | shape (BxF, h x w) | median ms | items/s | x torch | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["shape"]
        shape = f"{s['batch']}x{s['frames']}, {s['height']}x{s['width']}" if r["network"].startswith("unet") else \
            (f"{s['batch']}, mel {s['length']}" if r["network"] == "audio_encoder" else f"{s['batch']}, {s['height'] * 8}px")
        if "median_ms" not in r:
            lines.append(f"| {r['model']} | {r['network']} | {r['backend']} | {shape} | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        diff = r.get("max_abs_diff_vs_torch")
        lines.append(f"| {r['model']} | {r['network']} | {r['backend']} | {shape} | {r['median_ms']:.1f} | "
                     f"{r['throughput_items_per_s']:.2f} | {r.get('speedup_vs_torch', 1.0):.2f} | "
                     f"{'-' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)
