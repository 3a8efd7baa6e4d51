"""A sweep's table on disk: JSON (everything), CSV and Markdown (one line per row), PNG (quality vs speed).

Every file is written to a temporary name and renamed into place, so a reader never sees half a table.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

FORMAT = "latentsync-eval-sweep"
VERSION = 1
SETTING_COLUMNS = ("name", "mode", "backend", "steps", "guidance", "deepcache", "lookahead_ms")
TIME_COLUMNS = ("status", "wall_s", "frames", "frames_per_s", "speedup", "setup_s")
METRIC_COLUMNS = ("lse_c", "lse_d", "av_offset", "stable_mean", "stable_in_sync", "psnr_mouth", "psnr_frame",
                  "ssim_mouth", "ssim_frame", "flicker_mouth", "flicker_reference")  # fmt: skip
COLUMNS = (*SETTING_COLUMNS, *TIME_COLUMNS, *METRIC_COLUMNS, "frontier", "reason")
FILES = {"json": "sweep.json", "csv": "sweep.csv", "md": "sweep.md", "png": "sweep.png"}
PLOT_DPI = 110
PSNR_HEADROOM_DB = 3.0  # the baseline (identical to itself, capped PSNR) is drawn this far above the rest


def flat_rows(table) -> list[dict]:
    """One flat dict per row: setting, time, metrics, frontier flag (JSON-safe: no NaN/inf)."""
    from engine.eval.inputs import finite_json

    base = table.rows[0].wall_s if table.rows and table.rows[0].wall_s else None
    rows = []
    for row in table.rows:
        d = row.setting.describe()
        fps = row.frames / row.wall_s if row.wall_s else None
        d.update(status=row.status, reason=row.reason, wall_s=row.wall_s, frames=row.frames, frames_per_s=fps,
                 speedup=base / row.wall_s if base and row.wall_s else None, setup_s=row.setup_s,
                 wall_runs_s=row.wall_runs_s, output=row.output, timings=row.timings, stream=row.stream)  # fmt: skip
        d.update({k: row.metrics.get(k) for k in METRIC_COLUMNS})
        rows.append(finite_json(d))
    for d, on in zip(rows, frontier(rows)):
        d["frontier"] = on
    return rows


def fidelity_of(row: dict) -> float | None:
    return row.get("psnr_mouth") if row.get("psnr_mouth") is not None else row.get("psnr_frame")


def frontier(rows: list[dict]) -> list[bool]:
    """Rows no other row beats on both speed (frames/s) and fidelity (mouth PSNR, else frame PSNR)."""
    points = [(r.get("frames_per_s"), fidelity_of(r)) if r["status"] == "ok" else (None, None) for r in rows]

    def dominated(p, q) -> bool:
        return q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])

    return [p[0] is not None and p[1] is not None
            and not any(q[0] is not None and q[1] is not None and dominated(p, q) for q in points)
            for p in points]  # fmt: skip


def table_json(table) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "video": table.video, "audio": table.audio, "model": table.model,
        "device": table.device, "dtype": table.dtype, "baseline": table.baseline,
        "random_model": table.random_model, "random_eval_weights": table.random_eval_weights,
        "meaningless": table.meaningless, "warning": table.warning, "notes": table.notes,
        "face_frames": table.face_frames, "columns": list(COLUMNS), "rows": flat_rows(table),
    }  # fmt: skip


def write_table(table, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """Write sweep.json, sweep.csv, sweep.md and (with `plot`) sweep.png into `out_dir`; -> {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = table_json(table)
    paths = {kind: out_dir / name for kind, name in FILES.items() if plot or kind != "png"}
    _atomic_write(paths["json"], json.dumps(data, indent=1).encode())
    _atomic_write(paths["csv"], to_csv(data["rows"]).encode())
    _atomic_write(paths["md"], to_markdown(data).encode())
    if plot:
        _atomic_write(paths["png"], plot_png(data))
    return paths


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def to_markdown(data: dict) -> str:
    shown = [c for c in COLUMNS if c != "reason" and any(r.get(c) is not None for r in data["rows"])]
    lines = [f"# Sweep: {Path(data['video']).name} + {Path(data['audio']).name}", "",
             f"Model `{data['model']}` on {data['device']} ({data['dtype']}); fidelity is measured against "
             f"`{data['baseline']}` (PSNR capped at 100 dB for identical videos); times exclude model loading and "
             "face detection (done once for all rows).", ""]  # fmt: skip
    if data["warning"]:
        lines += [f"**WARNING: {data['warning']}.**", ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in shown) + " |" for r in data["rows"]]
    problems = [f"- `{r['name']}`: {r['status']}: {r['reason']}" for r in data["rows"] if r["status"] != "ok"]
    notes = [f"- {n}" for n in data["notes"]]
    if problems or notes:
        lines += ["", *problems, *notes]
    return "\n".join(lines) + "\n"


def plot_png(data: dict) -> bytes:
    """Quality vs speed: fidelity (PSNR) and sync (LSE-C, else StableSyncNet) against frames/s; frontier joined."""
    from engine.extras import import_optional

    import_optional("matplotlib", "plot", what="the sweep's plot (or --no-plot)").use("Agg")
    from matplotlib.figure import Figure

    rows = [r for r in data["rows"] if r["status"] == "ok" and r.get("frames_per_s")]
    sync_key, sync_label = ("lse_c", "SyncNet LSE-C (higher is better)")
    if not any(r.get("lse_c") is not None for r in rows):
        sync_key, sync_label = ("stable_mean", "StableSyncNet mean (higher is better)")
    fig = Figure(figsize=(12, 5))
    left, right = fig.subplots(1, 2)
    finite = [fidelity_of(r) for r in rows[1:] if fidelity_of(r) is not None]
    cap = (max(finite) if finite else 0.0) + PSNR_HEADROOM_DB

    def fid(r):
        value = fidelity_of(r)
        return None if value is None else min(value, cap)

    for ax, key, label in ((left, fid, "PSNR of the mouth vs baseline, dB (identical: drawn on top)"),
                           (right, lambda r: r.get(sync_key), sync_label)):  # fmt: skip
        pts = [(r["frames_per_s"], key(r), r) for r in rows if key(r) is not None]
        for x, y, r in pts:
            ax.scatter([x], [y], marker="*" if r is data["rows"][0] else "o", s=60,
                       color="tab:red" if r.get("frontier") else "tab:blue")  # fmt: skip
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = sorted((x, y) for x, y, r in pts if r.get("frontier"))
        if len(front) > 1:
            ax.plot(*zip(*front), color="tab:red", linewidth=1, label="frontier (speed vs fidelity)")
            ax.legend(fontsize=7)
        ax.set_xlabel("frames per second (higher is faster)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    title = f"{Path(data['video']).name}: model {data['model']} on {data['device']}"
    if data["warning"]:
        title += "\nRANDOM WEIGHTS: quality numbers are meaningless"
    fig.suptitle(title, color="tab:red" if data["warning"] else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI)
    return buf.getvalue()
