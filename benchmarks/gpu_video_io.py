"""gpu_check's `video_io` step: GPU video I/O (NVDEC decode, NVENC encode; the [gpu-video] extra) against PyAV.

Rows (kind "video_io"), each planned against the step's budget (a case that would not fit is skipped with a reason):
- decode: frames/s of the demo clip at 1080x1920 through PyAV (what `--video-io cpu` uses) and through NVDEC
  (torchcodec's CUDA decoder, frames left on the GPU and copied to the host as the face path takes them today);
- encode: frames/s of libx264 crf 18 at `veryfast` and `medium` (the engine's VideoWriter) and of NVENC
  (GpuVideoWriter) on the same decoded frames;
- job: one tiny-random job on the demo clip with `--video-io cpu` and then `gpu`: wall seconds, frames.
Where torchcodec or PyNvVideoCodec cannot be imported (not carried, or no FFmpeg libraries for torchcodec) or there is
no CUDA device, the GPU rows say so in `skipped`; the CPU rows still run. `--quick` (CPU rehearsal) uses a small
synthetic clip: the plumbing, not a measurement.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

Emit = Callable[[dict[str, Any]], None]
FRAMES = 100  # decoded and NVENC-encoded frames of the demo clip (4 s)
X264_FRAMES = {"veryfast": 25, "medium": 12}  # x264 at 1080x1920 costs 40-100 ms/frame of one core
JOB_SECONDS = 1.0  # speech of the end-to-end job
QUICK_SIZE = (96, 128)  # (H, W) of the synthetic rehearsal clip


def gpu_unavailable(device: str) -> str | None:
    """Why the NVDEC/NVENC rows cannot run here (None: they can): no CUDA device, or a library that fails to
    import (with its own message: a missing wheel, or torchcodec without the FFmpeg libraries it links)."""
    import torch

    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return f"no CUDA device (device {device}): NVDEC/NVENC need one"
    problems = []
    for module in ("torchcodec.decoders", "PyNvVideoCodec"):
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the reason, recorded as it is
            problems.append(f"{module}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    if problems:
        return ("the [gpu-video] extra cannot be imported (" + "; ".join(problems) + "); carry the wheels that "
                "`python benchmarks/gpu_check.py --prepare` prints")
    return None


def _rate(count: int, seconds: float) -> dict[str, Any]:
    return {"frames": count, "seconds": round(seconds, 3), "frames_per_s": round(count / seconds, 1) if seconds else None}


def _synthetic_clip(path: Path, frames: int) -> Path:
    """A small H.264 clip (the rehearsal has no demo media)."""
    from engine.media.writer import VideoWriter

    rng = np.random.default_rng(0)
    h, w = QUICK_SIZE
    with VideoWriter(path, w, h, preset="ultrafast") as writer:
        for _ in range(frames):
            writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def measure_video_io(plan, budget, emit: Emit, *, media: Path | None) -> None:  # noqa: ANN001
    """The step's body (see the module docstring)."""
    import torch

    from engine.media import iter_video_frames
    from engine.media.writer import VideoWriter

    reason = gpu_unavailable(plan.device)
    count = 8 if plan.quick else FRAMES
    with tempfile.TemporaryDirectory(prefix="gpu-check-video-io-") as tmp:
        tmp = Path(tmp)
        video = _synthetic_clip(tmp / "clip.mp4", count) if plan.quick else Path(media) / "demo1_video.mp4"
        base = {"kind": "video_io", "video": video.name, "quick": plan.quick}

        # decode ---------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        frames = [f.rgb for f in iter_video_frames(video, max_frames=count)]
        emit({**base, "op": "decode", "path": "pyav (cpu)", "size_hw": list(frames[0].shape[:2]),
              **_rate(len(frames), time.perf_counter() - t0)})
        if reason is not None:
            emit({**base, "op": "decode", "path": "nvdec (torchcodec)", "skipped": reason})
        elif not budget.fits(8.0):
            emit({**base, "op": "decode", "path": "nvdec (torchcodec)", "skipped": f"budget: {budget.left():.0f} s left"})
        else:
            from engine.media.gpu_video import iter_gpu_video_frames

            for host in (False, True):
                try:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    n = sum(1 for _ in iter_gpu_video_frames(video, max_frames=count, host=host))
                    torch.cuda.synchronize()
                    emit({**base, "op": "decode", "path": "nvdec (torchcodec)", "to_host": host,
                          **_rate(n, time.perf_counter() - t0)})
                except Exception as exc:  # noqa: BLE001
                    emit({**base, "op": "decode", "path": "nvdec (torchcodec)", "to_host": host,
                          "error": f"{type(exc).__name__}: {exc}"[:500]})

        # encode ---------------------------------------------------------------------------------------------
        h, w = frames[0].shape[:2]
        for preset, n in X264_FRAMES.items():
            n = min(n, len(frames), 4 if plan.quick else n)
            if not budget.fits(n * 0.15 + 1):
                emit({**base, "op": "encode", "path": f"x264 {preset} crf 18", "skipped": f"budget: {budget.left():.0f} s left"})
                continue
            t0 = time.perf_counter()
            with VideoWriter(tmp / f"x264-{preset}.mp4", w, h, crf=18, preset=preset) as writer:
                for frame in frames[:n]:
                    writer.write(frame)
            emit({**base, "op": "encode", "path": f"x264 {preset} crf 18", **_rate(n, time.perf_counter() - t0),
                  "bytes": (tmp / f"x264-{preset}.mp4").stat().st_size})
        if reason is not None:
            emit({**base, "op": "encode", "path": "nvenc (PyNvVideoCodec)", "skipped": reason})
        elif not budget.fits(5.0):
            emit({**base, "op": "encode", "path": "nvenc (PyNvVideoCodec)", "skipped": f"budget: {budget.left():.0f} s left"})
        else:
            from engine.media.gpu_video import GpuVideoWriter

            try:
                t0 = time.perf_counter()
                with GpuVideoWriter(tmp / "nvenc.mp4", w, h) as writer:
                    for frame in frames:
                        writer.write(frame)
                emit({**base, "op": "encode", "path": "nvenc (PyNvVideoCodec)", "from_host": True,
                      **_rate(len(frames), time.perf_counter() - t0), "bytes": (tmp / "nvenc.mp4").stat().st_size})
            except Exception as exc:  # noqa: BLE001
                emit({**base, "op": "encode", "path": "nvenc (PyNvVideoCodec)", "error": f"{type(exc).__name__}: {exc}"[:500]})

        # one job, cpu vs gpu video I/O ----------------------------------------------------------------------
        if plan.quick or reason is not None:
            emit({**base, "op": "job", "skipped": reason or "--quick: the job comparison needs the GPU and the demo clip"})
            return
        _jobs(plan, budget, emit, base, Path(media), tmp)


def _jobs(plan, budget, emit: Emit, base: dict, media: Path, tmp: Path) -> None:  # noqa: ANN001
    """The tiny-random model on the demo clip (1 s of speech, the prepared face track): video I/O cpu vs gpu."""
    import json
    import math

    from engine.constants import SAMPLE_RATE
    from engine.media import load_audio
    from engine.pipeline.faces import LandmarkArraySource
    from engine.pipeline.sdk import LipSync

    points = json.loads((media / "demo1_face_track.json").read_text())["landmarks3"]
    landmarks = np.array([[[math.nan] * 2] * 3 if p is None else p for p in points], np.float32)
    speech = load_audio(media / "demo1_audio.wav", sample_rate=SAMPLE_RATE)[: int(JOB_SECONDS * SAMPLE_RATE)]
    video = media / "demo1_video.mp4"
    try:
        sync = LipSync.from_pretrained("tiny-random", device=plan.device)
    except Exception as exc:  # noqa: BLE001
        emit({**base, "op": "job", "error": f"tiny-random: {type(exc).__name__}: {exc}"[:500]})
        return
    try:
        for label, video_io in (("warm-up", "cpu"), ("timed", "cpu"), ("timed", "gpu")):
            if not budget.fits(5.0):
                emit({**base, "op": "job", "video_io": video_io, "skipped": f"budget: {budget.left():.0f} s left"})
                continue
            try:
                t0 = time.perf_counter()
                result = sync(str(video), speech, tmp / f"job-{video_io}.mp4", face=LandmarkArraySource(landmarks),
                              video_io=video_io, steps=1)
                wall = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                emit({**base, "op": "job", "video_io": video_io, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            if label == "timed":
                emit({**base, "op": "job", "model": "tiny-random", "video_io": result.video_io,
                      "speech_s": JOB_SECONDS, "frames": result.num_frames, "wall_s": round(wall, 3),
                      "frames_per_s": round(result.num_frames / wall, 2)})
    finally:
        sync.close()
