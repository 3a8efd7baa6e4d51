"""gpu_check.json -> gpu_check.md (tables per step) and unet.png / vae.png / pipeline.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _rows(report: dict[str, Any], step: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in report["results"].get(step, {}).get("rows", []) if r.get("kind") == kind]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _note(row: dict[str, Any]) -> str:
    return str(row.get("skipped") or row.get("error") or "")[:160]


def markdown(report: dict[str, Any], notes: list[str]) -> str:
    machine = report["machine"]
    lines = [f"# GPU check ({report['started_at']}, `{RESULT_NAME}`)", "",
             f"Machine: {machine.get('gpu') or 'no GPU'}, torch {machine['torch']} (CUDA {machine.get('cuda_runtime')}), "
             f"{machine['cpu_count']} CPUs, load {machine['load_average']}; quick: {report['quick']}.", "",
             "## Steps", ""]
    lines += _table(["step", "status", "seconds", "budget s", "reason"],
                    [[s["name"], s["status"], s["seconds"], s["budget_s"], s["reason"] or ""] for s in report["steps"]])
    summary = _rows(report, "tests", "summary")
    if summary:
        counts = summary[-1]["counts"]
        lines += ["", "## 1. requires_cuda / requires_trt tests", "",
                  ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no test ran", ""]
        lines += _table(["test", "outcome", "s", "message"],
                        [[r["test"], r["outcome"], r["seconds"], (r["message"] or "")[:120]]
                         for r in _rows(report, "tests", "test")])
    unet = _rows(report, "unet", "unet")
    if unet:
        what = "tiny-random, --quick sizes" if report["quick"] else "official architecture, random weights, 16 frames, CFG batch 2"
        lines += ["", f"## 2. U-Net ({what})", ""]
        flops = {r["latent"]: r for r in _rows(report, "unet", "flops")}
        lines += [f"Counted FLOPs per call: " + "; ".join(
            f"{r['resolution']} px: full {r['tflop_full']} TFLOP, shallow {r['tflop_shallow']} TFLOP "
            f"(reference {r['reference_tflop_full_per_16_frames']} per 16-frame clip)" for r in flops.values()), ""]
        lines += _table(["px", "dtype", "mode", "pass", "ms median", "TFLOP/s", "of 790", "max abs dev", "rel L2 dev",
                         "finite", "first call s", "note"],
                        [[r["resolution"], r["dtype"], r["mode"], r.get("pass"), r.get("ms_median"),
                          r.get("tflops_achieved"), r.get("fraction_of_peak"), r.get("max_abs_dev"),
                          r.get("rel_l2_dev"), r.get("finite"), r.get("first_call_s"), _note(r)] for r in unet])
    vae = _rows(report, "vae", "vae")
    if vae:
        what = "tiny VAE, --quick sizes" if report["quick"] else "sd-vae-ft-mse architecture, random weights"
        lines += ["", f"## 3. VAE ({what})", ""]
        lines += _table(["px", "dtype", "variant", "op", "ms / frame", "max abs dev", "finite", "max |out|", "note"],
                        [[r["resolution"], r["dtype"], r["variant"], r.get("op"), r.get("ms_per_frame"),
                          r.get("max_abs_dev"), r.get("finite"), r.get("max_abs_output"), _note(r)] for r in vae])
    pipeline = _rows(report, "pipeline", "pipeline")
    if pipeline:
        lines += ["", "## 4. Whole pipeline on the demo clip", ""]
        lines += _table(["variant", "backend", "px", "preset", "frames/s", "wall s", "GPU idle", "peak GPU GiB",
                         "largest stage", "note"],
                        [[r["variant"], r["backend"], r["resolution"], r.get("preset"), r.get("frames_per_s"),
                          r.get("wall_s"), r.get("gpu_idle_fraction"), r.get("peak_gpu_mem_gib"),
                          _largest(r.get("stage_share")), _note(r)] for r in pipeline])
    stream = _rows(report, "streaming", "stream")
    if stream:
        lines += ["", "## 5. Streaming", ""]
        lines += _table(["px", "chunk", "first frame s", "steady interval ms", "max gap ms", "note"],
                        [[r.get("resolution"), r.get("chunk_frames"), r.get("first_frame_latency_s"),
                          r.get("steady_frame_interval_ms"), r.get("max_gap_ms"), _note(r)] for r in stream])
    for r in _rows(report, "streaming", "throughput"):
        runs = (r.get("result") or {}).get("runs", [])
        lines += ["", f"N-stream throughput (`{r['script']}`): " + (_note(r) or "")]
        if runs:
            lines += [""] + _table(["streams", "aggregate frames/s", "sequential frames/s", "identical to solo"],
                                   [[x.get("streams"), x.get("aggregate_frames_per_s"), x.get("sequential_frames_per_s"),
                                     x.get("identical_to_solo")] for x in runs])
    if notes:
        lines += ["", "Plots: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


RESULT_NAME = "gpu_check.json"


def _largest(shares: dict[str, float] | None) -> str:
    if not shares:
        return "-"
    stage = max(shares, key=shares.get)
    return f"{stage} {shares[stage]:.0%}"


def plots(report: dict[str, Any], out: Path) -> list[str]:
    """Write the PNGs; returns one note per plot (written, or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: no plots"]
    notes = []
    for name, draw in (("unet.png", _plot_unet), ("vae.png", _plot_vae), ("pipeline.png", _plot_pipeline)):
        try:
            fig = draw(report, plt)
        except Exception as exc:  # a plot never costs the run its numbers
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        notes.append(name)
    return notes


def _bars(ax, labels: list[str], values: list[float], ylabel: str) -> None:  # noqa: ANN001
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)


def _plot_unet(report, plt):  # noqa: ANN001, ANN202
    rows = [r for r in _rows(report, "unet", "unet") if "ms_median" in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['resolution']} {r['dtype']} {r['mode']} {r['pass']}" for r in rows]
    _bars(axes[0], labels, [r["ms_median"] for r in rows], "ms per call (median)")
    _bars(axes[1], labels, [r["tflops_achieved"] for r in rows], "achieved TFLOP/s (790 = measured bf16 peak)")
    axes[1].axhline(790, color="gray", linewidth=0.8)
    fig.suptitle("U-Net, 16 frames, CFG batch 2")
    return fig


def _plot_vae(report, plt):  # noqa: ANN001, ANN202
    rows = [r for r in _rows(report, "vae", "vae") if "ms_per_frame" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    _bars(ax, [f"{r['resolution']} {r['dtype']} {r['variant']} {r['op']}" for r in rows],
          [r["ms_per_frame"] for r in rows], "ms per frame")
    ax.set_title("VAE encode / decode")
    return fig


def _plot_pipeline(report, plt):  # noqa: ANN001, ANN202
    rows = [r for r in _rows(report, "pipeline", "pipeline") if "stage_s" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_s"]))
    bottom = [0.0] * len(rows)
    colors = plt.get_cmap("tab20").colors
    for stage, color in zip(stages, colors * 2):
        values = [r["stage_s"].get(stage, 0.0) / max(r["frames"], 1) * 1e3 for r in rows]
        ax.bar(range(len(rows)), values, bottom=bottom, label=stage, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(rows)), [f"{r['variant']}\n{r['resolution']} {r['preset']}" for r in rows], fontsize=7)
    ax.set_ylabel("ms per output frame, by stage")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("whole pipeline: eager-serial vs optimized")
    return fig
