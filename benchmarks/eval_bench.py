"""Cost of `engine eval` stages on CPU: decode+crop, MFCC, mel, SyncNet, StableSyncNet, fidelity.

Writes benchmarks/results/eval_bench.json. Usage: python benchmarks/eval_bench.py [--frames 50] [--full-stable]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BOX = (510, 610, 690, 830)  # demo1 face box of the golden crops


def timed(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    from engine.eval.crops import crop_face, split_tracks
    from engine.eval.fidelity import ssim
    from engine.eval.lse import score_offsets
    from engine.eval.mfcc import syncnet_cc
    from engine.eval.stable_syncnet import load_stable_syncnet, official_stable_syncnet_config, stable_sync_score
    from engine.eval.syncnet import embed_clip, load_syncnet
    from engine.eval.syncnet_mel import melspectrogram
    from engine.eval.video import iter_rgb_frames, load_audio_int16

    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--full-stable", action="store_true", help="also time the full-size (401 M) StableSyncNet")
    args = parser.parse_args()
    video, audio = SHARED / "media" / "demo1_video.mp4", SHARED / "media" / "demo1_audio.wav"
    results: dict = {"device": "cpu", "torch_threads": torch.get_num_threads(), "frames": args.frames}

    samples, t = timed(lambda: load_audio_int16(audio))
    results["audio_decode_s"] = t
    results["audio_seconds"] = len(samples) / 16000
    _, results["mfcc_s"] = timed(lambda: syncnet_cc(samples), 3)
    mel, results["stable_mel_s"] = timed(lambda: melspectrogram(samples.astype(np.float32) / 32768), 3)

    track = split_tracks([BOX] * args.frames)[0]
    start = time.perf_counter()
    frames = list(itertools.islice(iter_rgb_frames(video), args.frames))
    results["decode_per_frame_s"] = (time.perf_counter() - start) / args.frames
    crops, t = timed(lambda: np.stack([crop_face(f[:, :, ::-1].copy(), track.size[i], track.cx[i], track.cy[i])
                                       for i, f in enumerate(frames)]))  # fmt: skip
    results["crop_per_frame_s"] = t / args.frames
    _, t = timed(lambda: ssim(frames[0], frames[1]), 2)
    results["ssim_1080p_frame_s"] = t

    net = load_syncnet(random_seed=0)
    n = args.frames - 5
    cc = syncnet_cc(samples)
    (lip, aud), t = timed(lambda: embed_clip(net, crops, cc, n))
    results["syncnet_windows"] = n
    results["syncnet_per_window_s"] = t / n
    _, results["lse_scoring_s"] = timed(lambda: score_offsets(lip, aud), 3)

    faces = np.random.default_rng(0).integers(0, 256, (32, 256, 256, 3), dtype=np.uint8)
    small = load_stable_syncnet(random_seed=0)
    _, t = timed(lambda: stable_sync_score(small, faces, mel, stride=16))
    results["stable_small_per_window_s"] = t / 2
    if args.full_stable:
        full = load_stable_syncnet(random_seed=0, config=official_stable_syncnet_config())
        _, t = timed(lambda: stable_sync_score(full, faces[:16], mel, stride=16))
        results["stable_full_per_window_s"] = t
    out = ROOT / "benchmarks" / "results" / "eval_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
