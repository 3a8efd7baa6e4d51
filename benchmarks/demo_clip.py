"""What the shipped demo clip (examples/media) is and how many frames `engine run` makes of it: probed and planned
by the engine itself (the audio plan of the tiny-random model: whisper features, then the output frame count for
each `--length`), in seconds and without running the networks on any frame.

Usage: python benchmarks/demo_clip.py [--out benchmarks/results/demo_clip.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_utils import REPO, RESULTS, machine_info  # noqa: E402

MEDIA = REPO / "examples" / "media"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_clip.json")
    args = parser.parse_args()

    from engine.constants import SAMPLE_RATE
    from engine.media import count_source_frames, load_audio, probe
    from engine.pipeline.sdk import LipSync

    video, audio = MEDIA / "demo1_video.mp4", MEDIA / "demo1_audio.wav"
    info = probe(video, require_video=True)
    samples = load_audio(audio)  # float32 [S] at 16 kHz mono, as `engine run` loads it
    sync = LipSync.from_pretrained("tiny-random", device="cpu")
    try:
        frames = {length: sync.core.plan_audio(samples, length=length).num_frames for length in ("audio", "official")}
    finally:
        sync.close()
    report = {
        "benchmark": "demo_clip",
        "command": "python benchmarks/demo_clip.py",
        "machine": machine_info(),
        "video": {"file": "examples/media/demo1_video.mp4", "width": info.video.width, "height": info.video.height,
                  "frames": count_source_frames(video)},
        "speech": {"file": "examples/media/demo1_audio.wav", "seconds": round(samples.size / SAMPLE_RATE, 3)},
        "output_frames": frames,  # what `engine run` writes for each --length (default "audio")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["output_frames"]), f"wrote {args.out}")


if __name__ == "__main__":
    main()
