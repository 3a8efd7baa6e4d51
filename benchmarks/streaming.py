"""Streaming benchmark: first-frame latency, per-chunk compute and the latency floor, N live sessions at once on one
engine core (first-frame latency, steady-state frame interval), live feature drift, soak RSS, and prepared-avatar
storage (bytes per minute, read speed) against the old raw format.

Speech is pushed in real time (40 ms pieces on the wall clock) into live sessions for
chunk sizes 8/12/16 and lookahead 0/120/240 ms, over the demo clip's frames and over a
prepared avatar. CPU with tiny-random: the compute numbers only show the structure
(floor vs compute, avatar saving); use --device cuda --model latentsync-1.6 for real ones.

    python benchmarks/streaming.py --seconds 1.2 --drift-seconds 6 --soak-minutes 3
    python benchmarks/streaming.py --first-chunk-only --guidance 1.0   # short grid on a slow CPU
    python benchmarks/streaming.py --parts avatar --avatar-frames 100   # avatar size per minute (1080p demos)
    python benchmarks/streaming.py --parts sessions --guidance 1.0 --out benchmarks/results/streaming_sessions.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"
PIECE_S = 0.04  # real-time push granularity


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def demo_source(num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The e2e_demo1 crop (frames [T,320,320,3], landmarks [T,3,2]) and its speech (float32)."""
    from safetensors.numpy import load_file

    root = SHARED / "golden" / "e2e_demo1"
    inputs = load_file(root / "inputs.safetensors")
    frames = np.load(root / "inputs_frames.npz")["frames"][:num_frames]
    return frames, inputs["landmarks3"][:num_frames], inputs["audio_16k"]


def live_latency(sync, source, landmarks, speech: np.ndarray, *, chunk: int, lookahead_ms: float, settings,
                 first_chunk_only: bool = False) -> dict:
    """Push `speech` in real time into a live session; first-frame latency and per-chunk compute.

    `first_chunk_only`: stop once the first frame is out (the session is cancelled; on a slow
    CPU this keeps the grid short, and the first chunk is the one that sets the latency)."""
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    config = StreamConfig(mode="live", chunk_frames=chunk, lookahead_ms=lookahead_ms, realtime=False,
                          sync=settings, max_queued_seconds=600)
    walls: list[float] = []
    face = None if landmarks is None else LandmarkArraySource(landmarks)
    session = StreamSession(sync, source, config, on_frame=lambda f: walls.append(f.wall_time), face=face)
    piece = int(PIECE_S * 16000)
    t0 = time.time()
    for k, start in enumerate(range(0, speech.size, piece)):
        time.sleep(max(0.0, t0 + k * PIECE_S - time.time()))
        if first_chunk_only and walls:
            break
        session.push_audio(speech[start:start + piece])
    if first_chunk_only:
        while not walls and session.worker_alive:
            time.sleep(0.01)
        session.close(timeout=3600)
    else:
        session.end_of_speech()
        session.close(drain=True, timeout=3600)
    stats = session.stats
    chunk_s = chunk / 25
    return {
        "chunk_frames": chunk, "lookahead_ms": lookahead_ms, "frames": len(walls),
        "first_frame_latency_s": round(walls[0] - t0, 4) if walls else None,
        "latency_floor_s": stats["latency_floor_s"],
        "chunk_compute_s_mean": stats["chunk_compute_s_mean"], "chunk_compute_s_max": stats["chunk_compute_s_max"],
        "realtime_factor": round(stats["chunk_compute_s_mean"] / chunk_s, 3) if stats["chunk_compute_s_mean"] else None,
        "stage_seconds": stats["stage_seconds"],
    }


def concurrent_sessions(sync, source, landmarks, speech: np.ndarray, *, sessions: int, chunk: int,
                        lookahead_ms: float, settings, realtime: bool = False) -> dict:
    """`sessions` live sessions on the one engine core, each fed `speech` in real time from its own thread, all
    starting together. Per session: first-frame latency (first push to first speech frame) and the steady-state
    frame interval (mean time per speech frame from the second chunk on; 40 ms keeps up with real time)."""
    import threading

    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    config = StreamConfig(mode="live", chunk_frames=chunk, lookahead_ms=lookahead_ms, realtime=realtime,
                          sync=settings, max_queued_seconds=600)
    walls: list[list[tuple[float, bool]]] = [[] for _ in range(sessions)]  # (wall time, dropped) of speech frames

    def on_frame(k):
        return lambda f: walls[k].append((f.wall_time, f.dropped)) if f.kind == "speech" else None

    opened = [StreamSession(sync, source, config, on_frame=on_frame(k), face=LandmarkArraySource(landmarks))
              for k in range(sessions)]
    piece = int(PIECE_S * 16000)
    before = sync.core.engine.stats()
    t0 = time.time() + 0.1

    def feed(session) -> None:
        for k, start in enumerate(range(0, speech.size, piece)):
            time.sleep(max(0.0, t0 + k * PIECE_S - time.time()))
            session.push_audio(speech[start:start + piece])
        session.end_of_speech()
        session.close(drain=True, timeout=3600)

    threads = [threading.Thread(target=feed, args=(s,)) for s in opened]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = sync.core.engine.stats()
    rows = []
    for session, got in zip(opened, walls):
        times = [w for w, _ in got]
        steady = times[chunk:]
        stats = session.stats
        rows.append({
            "frames": len(times), "first_frame_latency_s": round(times[0] - t0, 4) if times else None,
            "steady_frame_interval_ms": round(1000 * (steady[-1] - steady[0]) / (len(steady) - 1), 2)
            if len(steady) > 1 else None,
            "last_frame_after_speech_s": round(times[-1] - (t0 + speech.size / 16000), 4) if times else None,
            "dropped_chunks": stats["dropped_chunks"], "late_chunks": stats["late_chunks"],
            "batched_chunks": stats["batched_chunks"], "chunks": stats["chunks"],
        })
    sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}

    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    return {"sessions": sessions, "chunk_frames": chunk, "lookahead_ms": lookahead_ms, "realtime": realtime,
            "speech_s": round(speech.size / 16000, 2), "latency_floor_s": config.latency_floor_s,
            "first_frame_latency_s_mean": mean("first_frame_latency_s"),
            "first_frame_latency_s_max": max((r["first_frame_latency_s"] for r in rows), default=None),
            "steady_frame_interval_ms_mean": mean("steady_frame_interval_ms"),
            "batch_sizes": {k: v for k, v in sorted(sizes.items()) if v}, "per_session": rows,
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def drift_table(encoder, seconds: float, chunks: list[int], lookaheads: list[float]) -> list[dict]:
    from engine.media import load_audio
    from engine.stream.live_features import live_feature_drift

    rows = []
    for clip in ("demo1", "demo2"):
        speech = load_audio(SHARED / "media" / f"{clip}_audio.wav")[: int(seconds * 16000)]
        for chunk in chunks:
            for ms in lookaheads:
                row = live_feature_drift(speech, encoder, lookahead_ms=ms, chunk_frames=chunk)
                rows.append({"clip": clip, "seconds": round(speech.size / 16000, 2), **row})
                print(f"drift {clip} chunk {chunk} lookahead {ms:g} ms: mean {row['mean_relative_l2']:.3f}", flush=True)
    return rows


def soak(sync, minutes: float, settings) -> dict:
    """Live speech for `minutes` pushed as fast as the bounded queue allows; faceless frames skip the
    U-Net, so what is measured is the session's own memory (speech buffers, features, timeline)."""
    from engine.errors import QueueFullError
    from engine.pipeline.faces import LandmarkArraySource
    from engine.stream import StreamConfig, StreamSession

    frames = np.zeros((10, 64, 64, 3), np.uint8)
    samples: list[tuple[int, float]] = []

    def on_frame(frame) -> None:
        if frame.index % 1500 == 0:
            samples.append((frame.index, rss_mib()))

    config = StreamConfig(mode="live", realtime=False, max_queued_seconds=10, sync=settings)
    session = StreamSession(sync, frames, config, on_frame=on_frame,
                            face=LandmarkArraySource(np.full((10, 3, 2), np.nan, np.float32)))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(int(minutes * 60 * 10)):
        piece = rng.integers(-3000, 3000, 1600).astype(np.int16)
        while True:
            try:
                session.push_audio(piece)
                break
            except QueueFullError:
                time.sleep(0.05)
    session.end_of_speech()
    session.close(drain=True, timeout=3600)
    rss = [r for _, r in samples]
    return {"minutes": minutes, "frames": session.stats["frames_emitted"], "wall_s": round(time.perf_counter() - t0, 1),
            "rss_mib_start": round(rss[0], 1) if rss else None, "rss_mib_end": round(rss[-1], 1) if rss else None,
            "rss_mib_max": round(max(rss), 1) if rss else None, "rss_samples": samples}


def raw_format_bytes_per_frame(height: int, width: int, resolution: int) -> int:
    """What format 1 stored per frame: raw RGB frame + raw aligned face + float32 posterior (+ matrix)."""
    latent = resolution // 8
    return height * width * 3 + resolution * resolution * 3 + 4 * 4 * latent * latent * 4 + 2 * 3 * 4


def avatar_storage(sync, clip: str, num_frames: int, face: str, crf: int | None = None) -> dict:
    """Prepare an avatar from the first `num_frames` frames of a demo clip (frames stored losslessly, or at
    x264 `crf`); bytes per file and per minute, prepare and read time per frame, and how far the frames read
    back are from the decoded source frames (max / mean absolute difference, PSNR)."""
    from engine.media import iter_video_frames
    from engine.stream import prepare_avatar
    from engine.stream.avatar import AvatarCursor

    frames = np.stack([f.rgb for f in iter_video_frames(SHARED / "media" / f"{clip}_video.mp4", max_frames=num_frames)])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        avatar = prepare_avatar(sync, frames, Path(tmp) / "avatar", face=face, frames_crf=crf)
        prepare_s = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in sorted(avatar.path.iterdir())}
        cursor = AvatarCursor(avatar)
        t0 = time.perf_counter()
        items = [next(cursor) for _ in range(2 * len(avatar))]  # one forward and one reversed pass
        read_s = time.perf_counter() - t0
        cursor.close()
        diff = np.stack([np.abs(item.frame.astype(np.int16) - frames[item.source_index]) for item in items])
    m = avatar.manifest
    total = sum(files.values())
    per_minute = 25 * 60 / m.num_frames
    old = raw_format_bytes_per_frame(m.height, m.width, m.resolution)
    return {
        "clip": clip, "frames_crf": crf, "frames": m.num_frames, "height": m.height, "width": m.width,
        "resolution": m.resolution, "dtype": m.dtype, "face_source": m.face_source,
        "frames_with_face": int(np.isfinite(avatar.matrices[:, 0, 0]).sum()),
        "bytes": files, "bytes_per_frame": round(total / m.num_frames),
        "frames_file_bytes_per_frame": round(files["frames.mkv"] / m.num_frames),
        "faces_file_bytes_per_frame": round(files["faces.mkv"] / m.num_frames),
        "mb_per_minute": round(total * per_minute / 1e6, 1),
        "old_raw_format_mb_per_minute": round(old * 25 * 60 / 1e6, 1),
        "ratio_old_to_new": round(old * m.num_frames / total, 2),
        "prepare_s_per_frame": round(prepare_s / m.num_frames, 4),
        "read_ms_per_frame": round(1000 * read_s / len(items), 2),  # frame + face decode, ping-pong order
        "frames_equal_to_source": bool(diff.max() == 0),
        "frames_max_abs_diff": int(diff.max()), "frames_mean_abs_diff": round(float(diff.mean()), 4),
        "frames_psnr_db": round(float(10 * np.log10(255 ** 2 / np.mean(diff.astype(np.float64) ** 2))), 2)
        if diff.max() else None,
    }


def posterior_mb_per_minute() -> dict:
    """Posterior bytes per minute for each model resolution and storage dtype (4 tensors [4,R/8,R/8] per frame)."""
    sizes = {"float32": 4, "float16": 2}
    return {f"{r}px_{d}": round(4 * 4 * (r // 8) ** 2 * b * 25 * 60 / 1e6, 1)
            for r in (256, 512) for d, b in sizes.items()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = result["latency"]
    labels = [f"{r['chunk_frames']}f/{r['lookahead_ms']:g}ms{'/av' if r['avatar'] else ''}" for r in rows]
    x = np.arange(len(rows))
    ax1.bar(x, [r["first_frame_latency_s"] or 0 for r in rows], label="first-frame latency")
    ax1.plot(x, [r["latency_floor_s"] for r in rows], "k_", markersize=14, label="floor (chunk + 120 ms + lookahead)")
    ax1.set_xticks(x, labels, rotation=90, fontsize=7)
    ax1.set_ylabel("seconds")
    ax1.set_title(f"live sessions, {result['model']} on {result['device']}")
    ax1.legend(fontsize=8)
    for clip in ("demo1", "demo2"):
        for chunk in sorted({r["chunk_frames"] for r in result["drift"]}):
            pts = [(r["lookahead_ms"], r["mean_relative_l2"]) for r in result["drift"]
                   if r["clip"] == clip and r["chunk_frames"] == chunk]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=f"{clip} chunk {chunk}")
    ax2.set_xlabel("lookahead (ms)")
    ax2.set_ylabel("mean relative L2 vs offline")
    ax2.set_title("live feature drift (random whisper: structure only)")
    if result["drift"]:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.pipeline.config import resolve_config
    from engine.pipeline.sdk import LipSync
    from engine.stream import prepare_avatar

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=1, help="DDIM steps (CPU default 1 to keep it short)")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--seconds", type=float, default=1.2, help="speech per live session")
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--lookaheads", type=float, nargs="+", default=[0, 120, 240])
    p.add_argument("--no-avatar-runs", action="store_true", help="skip the avatar half")
    p.add_argument("--first-chunk-only", action="store_true", help="cancel each session after its first frame")
    p.add_argument("--drift-seconds", type=float, default=6.0)
    p.add_argument("--drift-chunks", type=int, nargs="+", default=[16])
    p.add_argument("--drift-lookaheads", type=float, nargs="+", default=[0, 120, 240, 480])
    p.add_argument("--soak-minutes", type=float, default=0.0, help="also run a synthetic live stream this long")
    p.add_argument("--avatar-frames", type=int, default=100, help="frames of each demo clip for the avatar part")
    p.add_argument("--avatar-face", default="mediapipe", help="face source for the avatar part")
    p.add_argument("--avatar-crfs", type=int, nargs="*", default=[12],
                   help="also measure avatars stored at these x264 crf values (lossless is always measured)")
    p.add_argument("--session-counts", type=int, nargs="+", default=[1, 4],
                   help="sessions part: how many live sessions run at once on the one engine core")
    p.add_argument("--session-chunk", type=int, default=8, help="sessions part: live chunk frames")
    p.add_argument("--session-seconds", type=float, default=3.0, help="sessions part: speech per session")
    p.add_argument("--session-lookahead", type=float, default=240.0, help="sessions part: lookahead (ms)")
    p.add_argument("--parts", nargs="+", choices=["latency", "sessions", "drift", "soak", "avatar"],
                   default=["latency", "sessions", "drift", "soak", "avatar"])
    p.add_argument("--out", default=str(RESULTS / "streaming.json"))
    args = p.parse_args(argv)

    sync = LipSync.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    settings = resolve_config("reference", steps=args.steps, guidance_scale=args.guidance)
    frames, landmarks, speech = demo_source(10)
    speech = np.tile(speech, int(np.ceil(args.seconds * 16000 / speech.size)))[: int(args.seconds * 16000)]
    import av

    result = {"model": args.model, "device": args.device, "torch": torch.__version__, "av": av.__version__,
              "python": platform.python_version(), "processor": platform.processor(), "host": platform.node(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "settings": str(settings),
              "speech_seconds": args.seconds, "first_chunk_only": args.first_chunk_only, "latency": [], "sessions": [],
              "drift": [],
              "soak": None, "avatar": [],
              "command": " ".join(["python", "benchmarks/streaming.py", *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory() as tmp:
        avatar = None
        if "latency" in args.parts and not args.no_avatar_runs:
            t0 = time.perf_counter()
            from engine.pipeline.faces import LandmarkArraySource

            avatar = prepare_avatar(sync, frames, Path(tmp) / "avatar", face=LandmarkArraySource(landmarks))
            result["avatar_prepare_s_per_frame"] = round((time.perf_counter() - t0) / len(frames), 4)
        for use_avatar in ([False, True] if avatar is not None else [False]) if "latency" in args.parts else []:
            for chunk in args.chunks:
                for ms in args.lookaheads:
                    row = live_latency(sync, avatar if use_avatar else frames, None if use_avatar else landmarks,
                                       speech, chunk=chunk, lookahead_ms=ms, settings=settings,
                                       first_chunk_only=args.first_chunk_only)
                    row["avatar"] = use_avatar
                    result["latency"].append(row)
                    print(f"chunk {chunk} lookahead {ms:g} avatar {use_avatar}: first frame "
                          f"{row['first_frame_latency_s']} s (floor {row['latency_floor_s']}), chunk compute "
                          f"{row['chunk_compute_s_mean']} s", flush=True)
    if "sessions" in args.parts:
        session_speech = np.tile(speech, int(np.ceil(args.session_seconds * 16000 / speech.size)))
        session_speech = session_speech[: int(args.session_seconds * 16000)]
        for n in args.session_counts:
            row = concurrent_sessions(sync, frames, landmarks, session_speech, sessions=n, chunk=args.session_chunk,
                                      lookahead_ms=args.session_lookahead, settings=settings)
            result["sessions"].append(row)
            print(f"{n} live sessions: first frame {row['first_frame_latency_s_mean']} s (max "
                  f"{row['first_frame_latency_s_max']}, floor {row['latency_floor_s']:.2f}), steady frame interval "
                  f"{row['steady_frame_interval_ms_mean']} ms, batches {row['batch_sizes']}", flush=True)
    if "drift" in args.parts:
        result["drift"] = drift_table(sync.core.audio_encoder, args.drift_seconds, args.drift_chunks,
                                      args.drift_lookaheads)
    if "avatar" in args.parts:
        for crf in [None, *args.avatar_crfs]:
            for clip in ("demo1", "demo2"):
                row = avatar_storage(sync, clip, args.avatar_frames, args.avatar_face, crf)
                result["avatar"].append(row)
                print(f"avatar {clip} crf {crf}: {row['mb_per_minute']} MB/min ({row['old_raw_format_mb_per_minute']} "
                      f"MB/min raw, {row['ratio_old_to_new']}x), read {row['read_ms_per_frame']} ms/frame, "
                      f"max diff {row['frames_max_abs_diff']}, PSNR {row['frames_psnr_db']}", flush=True)
        result["avatar_posterior_mb_per_minute"] = posterior_mb_per_minute()
    if "soak" in args.parts and args.soak_minutes > 0:
        result["soak"] = soak(sync, args.soak_minutes, settings)
        print(f"soak: {result['soak']}", flush=True)
    result["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if result["latency"] or result["drift"]:
        plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
