"""gpu_check.json -> gpu_check.md (tables per step) and gpu_check.png (one figure, a panel per step with numbers)."""

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
    lines = [f"# GPU check ({report.get('started_at')}, `{RESULT_NAME}`)", "",
             f"Machine: {machine.get('gpu') or 'no GPU'}, torch {machine['torch']} (CUDA {machine.get('cuda_runtime')}), "
             f"{machine['cpu_count']} CPUs, load {machine['load_average']}; quick: {report['quick']}.", "",
             "## Steps", ""]
    lines += _table(["step", "status", "seconds", "budget s", "reason"],
                    [[s["name"], s["status"], s["seconds"], s["budget_s"], s["reason"] or ""] for s in report["steps"]])
    preflight = [(step, r) for step, data in report["results"].items() for r in data.get("rows", [])
                 if r.get("kind") == "preflight"]
    if preflight:
        lines += ["", "Known before the run (written first):", ""]
        lines += [f"- {step}: " + " ".join(str(r[k]) for k in ("mode", "dtype") if r.get(k)) + f" {r['note']}"
                  for step, r in preflight]
    budget = report.get("budget")
    if budget:
        lines += ["", f"Planned: {budget['total_s']:.0f} s of {budget['limit_s']:.0f} s (step budgets, {budget['grace_s']:.0f} s "
                      f"grace each, {budget['startup_allowance_s']:.0f} s start-up); took "
                      f"{_fmt(report.get('total_s'))} s."]
    summary = _rows(report, "tests", "summary")
    if summary:
        counts = summary[-1]["counts"]
        golden = _rows(report, "tests", "golden")
        lines += ["", "## 1. requires_cuda / requires_trt tests", "",
                  ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no test ran",
                  "" if not golden else f"Golden fixtures: {golden[-1]['source']}.", ""]
        lines += _table(["test", "outcome", "s", "message"],
                        [[r["test"], r["outcome"], r["seconds"], (r["message"] or "")[:120]]
                         for r in _rows(report, "tests", "test")])
    lines += _calibration(report)
    lines += _profile(report)
    unet = _rows(report, "unet", "unet")
    if unet:
        what = "tiny-random, --quick sizes" if report["quick"] else "official architecture, random weights, 16 frames, CFG batch 2"
        lines += ["", f"## 4. U-Net ({what})", ""]
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
        lines += ["", f"## 5. VAE ({what})", ""]
        lines += _table(["px", "dtype", "variant", "op", "ms / frame", "max abs dev", "finite", "max |out|", "note"],
                        [[r["resolution"], r["dtype"], r["variant"], r.get("op"), r.get("ms_per_frame"),
                          r.get("max_abs_dev"), r.get("finite"), r.get("max_abs_output"), _note(r)] for r in vae])
    pipeline = _rows(report, "pipeline", "pipeline")
    if pipeline:
        lines += ["", "## 6. Whole pipeline on the demo clip", ""]
        lines += _table(["variant", "backend", "px", "preset", "frames/s", "wall s", "GPU idle", "peak GPU GiB",
                         "largest stage", "note"],
                        [[r["variant"], r["backend"], r["resolution"], r.get("preset"), r.get("frames_per_s"),
                          r.get("wall_s"), r.get("gpu_idle_fraction"), r.get("peak_gpu_mem_gib"),
                          _largest(r.get("stage_share")), _note(r)] for r in pipeline])
    stream = _rows(report, "streaming", "stream")
    if stream:
        lines += ["", "## 7. Streaming", ""]
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
    for r in _rows(report, "system", "system"):
        lines += ["", f"## System (`{r['script']}`, the modelled device: modelled figures are not measurements)", "",
                  _note(r) or f"system.json embedded in {RESULT_NAME} (results.system)."]
    video_io = _rows(report, "video_io", "video_io")
    if video_io:
        lines += ["", "## Video I/O (NVDEC / NVENC against PyAV / x264; `benchmarks/gpu_video_io.py`)", ""]
        lines += _table(["op", "path", "frames", "frames/s", "wall s", "note"],
                        [[r.get("op"), r.get("path") or f"video_io {r.get('video_io')}", r.get("frames"),
                          r.get("frames_per_s"), r.get("wall_s", r.get("seconds")), _note(r)] for r in video_io])
    if notes:
        lines += ["", "Plots: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


RESULT_NAME = "gpu_check.json"


def _calibration(report: dict[str, Any]) -> list[str]:
    calls = _rows(report, "calibrate", "calibration")
    if not calls:
        return []
    head = _rows(report, "calibrate", "calibration-profile")
    files = _rows(report, "calibrate", "calibration-file")
    lines = ["", "## 2. Calibration of the modelled device (measured vs modelled per network call)", ""]
    if head:
        h = head[-1]
        lines += [f"Device {h['device_name']}, profile `{h['profile']}`, {h['dtype']}" + (f"; {h['note']}" if h.get("note") else "")
                  + ".", ""]
    lines += _table(["network", "px", "shapes", "GFLOP", "measured ms", "modelled ms", "measured / modelled", "note"],
                    [[r["network"], r.get("resolution"), _shapes(r.get("shapes")),
                      None if r.get("flops") is None else round(r["flops"] / 1e9, 2), r.get("measured_ms"),
                      r.get("predicted_ms"), r.get("measured_over_predicted"), _note(r)] for r in calls])
    for f in files:
        lines += ["", f"Calibration file: `{f.get('file')}` (valid for the modelled device: {f.get('valid')}); "
                      f"efficiency {f.get('efficiency')}" if "file" in f else f"Calibration file: {_note(f)}"]
    return lines


def _shapes(shapes: dict[str, list[int]] | None) -> str:
    return "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in (shapes or {}).items() if k != "timestep")[:90]


def _profile(report: dict[str, Any]) -> list[str]:
    cases = _rows(report, "profile", "profile")
    if not cases:
        return []
    lines = ["", "## 3. Kernel-level profile (one chunk per case)", ""]
    for r in cases:
        title = f"### {r.get('preset')} chunk, {r.get('variant')}, {r.get('resolution')} px"
        if "top" not in r:
            lines += [title, "", _note(r), ""]
            continue
        idle = r["idle"]
        lines += [title, "", f"{r['time_kind']}: {r['total_ms']} ms in total over a wall time of {r['wall_s']} s; "
                  f"device idle {_fmt(idle['idle_ms'])} ms of a {_fmt(idle['span_ms'])} ms span "
                  f"(idle fraction {_fmt(idle['idle_fraction'])}, {idle['gaps']} gaps).", ""]
        lines += _table(["family", "ms", "share"], [[f, v["ms"], v["share"]] for f, v in r["families"].items()])
        lines += [""] + _table(["#", "kernel", "family", "calls", "ms", "share"],
                               [[i + 1, f"`{k['name'][:90]}`", k["family"], k["calls"], k["ms"], k["share"]]
                                for i, k in enumerate(r["top"])])
        if idle["by_stage_boundary_ms"]:
            lines += ["", "Idle gaps by stage boundary (ms): " + "; ".join(
                f"{k}: {v}" for k, v in list(idle["by_stage_boundary_ms"].items())[:10])]
        if r.get("host_video_io_s"):
            lines += ["", "Video I/O on the host (s): " + ", ".join(f"{k} {v}" for k, v in r["host_video_io_s"].items())]
        lines += [""]
    return lines


def _largest(shares: dict[str, float] | None) -> str:
    if not shares:
        return "-"
    stage = max(shares, key=shares.get)
    return f"{stage} {shares[stage]:.0%}"


def plots(report: dict[str, Any], path: Path) -> list[str]:
    """One PNG (`path`) with a panel per step that has numbers; returns notes (written, or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib not installed: no plot"]
    panels = [(name, draw) for name, draw in (("unet", _plot_unet), ("vae", _plot_vae), ("pipeline", _plot_pipeline),
                                              ("profile", _plot_profile)) if _has_numbers(report, name)]
    if not panels:
        return []
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    notes = []
    for (name, draw), ax in zip(panels, axes[:, 0]):
        try:
            draw(report, ax)
        except Exception as exc:  # a plot never costs the run its numbers
            notes.append(f"{name} panel: {type(exc).__name__}: {exc}")
            ax.set_axis_off()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, format="png")
    plt.close(fig)
    from gpu_check import write_atomically

    write_atomically(path, buffer.getvalue())
    return [f"{path.name} ({', '.join(name for name, _ in panels)})", *notes]


def _has_numbers(report: dict[str, Any], step: str) -> bool:
    keys = {"unet": "ms_median", "vae": "ms_per_frame", "pipeline": "stage_s", "profile": "families"}
    return any(keys[step] in r for r in report["results"].get(step, {}).get("rows", []))


def _bars(ax, labels: list[str], values: list[float], ylabel: str) -> None:  # noqa: ANN001
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)


def _plot_unet(report, ax) -> None:  # noqa: ANN001
    rows = [r for r in _rows(report, "unet", "unet") if "ms_median" in r]
    _bars(ax, [f"{r['resolution']} {r['dtype']} {r['mode']} {r['pass']}" for r in rows],
          [r["tflops_achieved"] for r in rows], "achieved TFLOP/s")
    ax.set_title("U-Net, 16 frames, CFG batch 2 (790 = measured bf16 peak of an H200)")


def _plot_vae(report, ax) -> None:  # noqa: ANN001
    rows = [r for r in _rows(report, "vae", "vae") if "ms_per_frame" in r]
    _bars(ax, [f"{r['resolution']} {r['dtype']} {r['variant']} {r['op']}" for r in rows],
          [r["ms_per_frame"] for r in rows], "ms per frame")
    ax.set_title("VAE encode / decode")


def _plot_pipeline(report, ax) -> None:  # noqa: ANN001
    rows = [r for r in _rows(report, "pipeline", "pipeline") if "stage_s" in r]
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_s"]))
    bottom = [0.0] * len(rows)
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20").colors
    for stage, color in zip(stages, colors * 2):
        values = [r["stage_s"].get(stage, 0.0) / max(r["frames"], 1) * 1e3 for r in rows]
        ax.bar(range(len(rows)), values, bottom=bottom, label=stage, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(rows)), [f"{r['variant']}\n{r['resolution']} {r['preset']}" for r in rows], fontsize=7)
    ax.set_ylabel("ms per output frame, by stage")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("whole pipeline: eager-serial vs optimized")


def _plot_profile(report, ax) -> None:  # noqa: ANN001
    rows = [r for r in _rows(report, "profile", "profile") if "families" in r]
    families = list(dict.fromkeys(f for r in rows for f in r["families"]))
    left = [0.0] * len(rows)
    for family in families:
        values = [r["families"].get(family, {}).get("share") or 0.0 for r in rows]
        ax.barh(range(len(rows)), values, left=left, label=family)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(rows)), [f"{r['preset']} {r['variant']} {r['resolution']}" for r in rows], fontsize=7)
    ax.set_xlabel(f"share of {rows[0]['time_kind'] if rows else 'device time'}")
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("kernel time by op family")
