"""Browser demo latency: speech in -> first talking frame shown in the browser, through `engine demo` over WebRTC.

`engine demo` (a subprocess, as a user runs it: tiny-random, one step, chunks of 8, a still 320x320 face clip and
0.32 s of speech read in a loop) serves its page to a headless Chromium on loopback (tests/browser_helpers.py).
For each utterance, the latency is the time from the demo's speech stage sending it (the server's log, unix time)
to the first decoded frame in the browser whose mouth region is lip-synced (the page's clock, unix time: one
machine, one clock); the session's own part (speech in -> first frame out of the lip-sync session, from the
server's log) is reported beside it, and the difference is what the rest adds. It covers the whole path: the Pipecat pipeline, the lip-sync session, Pipecat's output
transport, aiortc's VP8 encoding, WebRTC over loopback and Chromium's decoding. CPU with tiny-random (random
weights): the figure shows the structure, not what a GPU with real weights does. Needs Chromium and the [webrtc]
extra.

    python benchmarks/webrtc_demo.py --utterances 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from bench_utils import RESULTS, machine_info  # noqa: E402
from browser_helpers import (  # noqa: E402
    STATE,
    connect_and_see_frames,
    running_chromium,
    running_demo,
    tail,
    wait_for,
    write_demo_inputs,
)

SENT = re.compile(r"demo: utterance (\d+), ([\d.]+) s of speech, sent at ([\d.]+)")
SHOWN = re.compile(r"demo: utterance (\d+) shown, its first frame made ([\d.]+) s after")


def utterances_sent(log: Path) -> list[tuple[int, float]]:
    """(number, unix time sent) of every utterance the demo's speech stage sent, from its log."""
    return [(int(m.group(1)), float(m.group(3))) for m in SENT.finditer(log.read_text(errors="replace"))]


def session_latencies(log: Path) -> dict[int, float]:
    """{utterance number: seconds from its speech to its first frame out of the lip-sync session}, from the log."""
    return {int(m.group(1)): float(m.group(2)) for m in SHOWN.finditer(log.read_text(errors="replace"))}


def latencies(sent: list[tuple[int, float]], talk_starts_s: list[float]) -> list[float]:
    """For each utterance, seconds from its sending to the first talking frame after it (and before the next one)."""
    out = []
    for k, (_, at) in enumerate(sent):
        until = sent[k + 1][1] if k + 1 < len(sent) else float("inf")
        first = next((t for t in talk_starts_s if at <= t < until), None)
        if first is not None:
            out.append(round(first - at, 3))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=3, help="utterances to time")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for them")
    p.add_argument("--out", default=str(RESULTS / "webrtc_demo_cpu_tiny.json"))
    args = p.parse_args()
    shared = Path(os.environ.get("LATENTSYNC_SHARED", REPO.parent / "shared"))
    before = machine_info("2-core CPU shared with other jobs")
    with tempfile.TemporaryDirectory(prefix="webrtc-demo-bench-") as folder:
        folder = Path(folder)
        inputs = write_demo_inputs(shared / "golden", folder)
        with running_demo(inputs, folder) as server, running_chromium(folder) as browser:
            def diagnose() -> str:
                return f"server log:\n{tail(server['log'])}"

            browser.call("Page.enable")
            connect_and_see_frames(browser, server["url"], diagnose)
            started = time.time()
            state = wait_for(lambda: (s := browser.js(STATE)) and len(s["talkStarts"]) >= args.utterances and s,
                             args.timeout, f"{args.utterances} utterances shown", diagnose)
            time.sleep(0.5)
            sent = [u for u in utterances_sent(server["log"]) if u[1] <= time.time()]
            session = session_latencies(server["log"])
        wall_s = time.time() - started
    talk = [t / 1000 for t in state["talkStarts"]]
    measured = latencies(sent, talk)[:args.utterances]
    in_session = [session.get(number) for number, _ in sent[:len(measured)]]
    added = [round(b - a, 3) for a, b in zip(in_session, measured) if a is not None]
    report = {
        "label": "engine demo over WebRTC in headless Chromium, CPU, tiny-random (random weights): structure only",
        "command": "python benchmarks/webrtc_demo.py " + " ".join(sys.argv[1:]),
        "demo_command": "engine demo --source <still 320x320 clip> --face <track> --speech <0.32 s WAV> "
                        "--model tiny-random --device cpu --steps 1 --guidance 1 --chunk-frames 8 --offline",
        "latency_s": measured,
        "latency_s_median": round(statistics.median(measured), 3) if measured else None,
        "session_latency_s": in_session,  # speech in -> first frame out of the lip-sync session (server side)
        "added_by_pipeline_webrtc_and_browser_s": added,
        "added_s_median": round(statistics.median(added), 3) if added else None,
        "utterances_sent": len(sent),
        "frames_decoded": state["frames"],
        "wall_s": round(wall_s, 1),
        "machine": before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("latency_s", "latency_s_median", "session_latency_s", "added_s_median",
                                             "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
