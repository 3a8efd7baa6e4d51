"""Media throughput on the demo clips: probe latency, decode and encode frames/s, audio load time, peak memory.

Usage: python benchmarks/media.py [--media DIR] [--encode-frames N] [--out benchmarks/results/media.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import av

from engine.media import VideoWriter, cut_clip, iter_video_frames, load_audio, probe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MEDIA = REPO.parent / "shared" / "media"
ENCODE_PRESETS = ("ultrafast", "veryfast", "medium")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def _timed(fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_clip(path: Path) -> dict:
    info = probe(path)
    result = {
        "file": path.name, "codec": info.video.codec, "size": [info.video.width, info.video.height],
        "frames": info.video.frames, "fps": info.video.fps,
        "probe_metadata_ms": 1000 * _timed(lambda: probe(path, decode_check=False), 5),
        "probe_with_first_frame_ms": 1000 * _timed(lambda: probe(path), 5),
        "load_audio_track_ms": 1000 * _timed(lambda: load_audio(path), 3),
    }
    rss_before = _reset_peak_rss()
    start = time.perf_counter()
    count = sum(1 for _ in iter_video_frames(path))
    seconds = time.perf_counter() - start
    result.update(decode_frames=count, decode_s=seconds, decode_fps=count / seconds,
                  decode_peak_rss_growth_mb=_status_mb("VmHWM") - rss_before,
                  all_frames_rgb_mb=count * info.video.width * info.video.height * 3 / 2**20)
    return result


def bench_encode(src: Path, frames: int, tmp: Path) -> list[dict]:
    rgb = [f.rgb for f in iter_video_frames(src, max_frames=frames)]
    h, w = rgb[0].shape[:2]
    audio = load_audio(src)[: frames * 640]
    rows = []
    for preset in ENCODE_PRESETS:
        out = tmp / f"enc_{preset}.mp4"
        start = time.perf_counter()
        with VideoWriter(out, w, h, crf=18, preset=preset, audio=audio) as writer:
            for frame in rgb:
                writer.write(frame)
        seconds = time.perf_counter() - start
        rows.append({"preset": preset, "size": [w, h], "frames": frames, "seconds": seconds,
                     "encode_fps": frames / seconds, "bytes": out.stat().st_size})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=DEFAULT_MEDIA)
    parser.add_argument("--encode-frames", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "media.json")
    args = parser.parse_args()
    clips = sorted(args.media.glob("*_video.mp4"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        cut_clip(clips[0], tmp_path / "cut.mp4", seconds=2.0)
        cut_s = time.perf_counter() - start
        report = {
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "pyav": av.__version__},
            "decode": [bench_clip(p) for p in clips],
            "encode_1080x1920": bench_encode(clips[0], args.encode_frames, tmp_path),
            "wav_load_ms": 1000 * _timed(lambda: load_audio(args.media / "demo1_audio.wav"), 5),
            "cut_clip_2s_s": cut_s,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
