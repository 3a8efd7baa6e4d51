"""Cost of the pre-model checks of a job (engine.media.preflight) on the demo clips: cold (a fresh process, imports
included) and warm, split into probe, the demux pass over every video packet and the full audio decode. Writes JSON.

    python benchmarks/preflight.py --out benchmarks/results/preflight.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import REPO, SHARED_MEDIA, machine_info  # noqa: E402

COLD = ("import sys, time; t = time.perf_counter(); from engine.media.preflight import preflight; "
        "preflight(sys.argv[1], sys.argv[2], sys.argv[3]); print(time.perf_counter() - t)")


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/preflight.json")
    args = ap.parse_args()
    from engine.media import load_audio, probe
    from engine.media.preflight import check_video_packets, preflight

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.mp4")
        for name in ("demo1", "demo2"):
            video, audio = SHARED_MEDIA / f"{name}_video.mp4", SHARED_MEDIA / f"{name}_audio.wav"
            cold = subprocess.run([sys.executable, "-c", COLD, str(video), str(audio), out], capture_output=True,
                                  text=True, check=True, cwd=REPO)
            info = probe(video, require_video=True)
            rows[name] = {
                "video": f"{info.video.codec} {info.video.width}x{info.video.height} {info.video.frames} frames",
                "cold_process_s": float(cold.stdout.strip()),
                "warm_total_s": best(lambda: preflight(video, audio, out), args.repeats),
                "probe_s": best(lambda: probe(video, require_video=True), args.repeats),
                "demux_pass_s": best(lambda: check_video_packets(video, info), args.repeats),
                "audio_decode_s": best(lambda: load_audio(audio), args.repeats),
            }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "preflight", "rows": rows, "command": " ".join(sys.argv),
                                **machine_info(f"best of {args.repeats}; cold includes importing torch")},
                               indent=1) + "\n")
    for name, row in rows.items():
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
