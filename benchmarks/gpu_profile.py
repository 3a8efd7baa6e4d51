"""gpu_check's `profile` step: where the device time of one chunk goes, kernel by kernel.

torch.profiler over one reference chunk at 512 px on the official-equivalent path (eager-serial) and one fast
chunk on the optimized path; per chunk: the top kernels by device time with their share, the time per op family
(conv, GEMM, attention, norm, random, elementwise, copies, video I/O, other), and the device's idle gaps, each placed
between the engine stages (StageClock labels every stage `stage:NAME` in the trace) that surround it. This is
the evidence kernels/README.md asks for before a custom kernel lands.

On a CPU (`--quick`) there are no kernels: the same tables are built from the CPU ops' self time, so the step's
code is exercised here; its rows say which time they hold (`time_kind`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

TOP_KERNELS = 25
LARGEST_GAPS = 10
GAP_FLOOR_US = 5.0  # shorter gaps are launch jitter, not idle time worth naming
CHUNK_FRAMES = 16
CASE_ESTIMATE_S = 12.0  # one profiled chunk at 512 with its warm-up, official size on a GPU
STAGE_PREFIX = "stage:"

# first match wins; names are lower-cased kernel names (CUDA) or op names (CPU)
FAMILIES = (
    ("video I/O", r"nvdec|nvjpeg|nvenc|nv12|yuv|libav|swscale|video"),
    ("attention", r"flash|fmha|attention|attn|sdpa|scaled_dot_product|softmax"),
    ("random", r"normal_|uniform_|randn|random|philox|curand|bernoulli"),  # noise draws: before "norm" (normal_)
    ("norm", r"norm|welford"),
    ("conv", r"conv|cudnn|winograd|implicit_gemm|fprop|dgrad|wgrad|im2col"),
    ("GEMM", r"gemm|matmul|(^|::|_)(add|b)?mm\b|linear|cublas|cutlass|xmma|sm\d\d_|ampere|hopper"),
    ("copies", r"copy|memcpy|memset|\bcat\b|::cat|concat|contiguous|transpose|permute|clone|index|gather|scatter|"
               r"pad|stack|flip|roll|to_copy|_to\b"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton_|silu|gelu|sigmoid|add|mul|div|sub|exp|"
                    r"tanh|where|fill|clamp|neg|pow|sqrt|rsqrt|upsample|interpolate|reduce|sum|mean|max|min|"
                    r"round|floor|lerp|abs"),
)
_FAMILY_RE = [(name, re.compile(pattern)) for name, pattern in FAMILIES]
HOST_VIDEO_STAGES = ("decode", "encode", "read", "write", "mux")


def op_family(name: str) -> str:
    lowered = name.lower()
    for family, pattern in _FAMILY_RE:
        if pattern.search(lowered):
            return family
    return "other"


def _intervals(prof, cuda: bool) -> tuple[list[tuple[str, float, float]], list[tuple[str, float, float]], str]:
    """(work intervals (name, start µs, end µs), stage intervals, what the time is) from a finished profile."""
    from torch.autograd import DeviceType

    events = prof.events()
    stages_cpu, stages_dev, work = [], [], []
    for e in events:
        start, end = float(e.time_range.start), float(e.time_range.end)
        if e.name.startswith(STAGE_PREFIX):
            (stages_dev if e.device_type == DeviceType.CUDA else stages_cpu).append((e.name[len(STAGE_PREFIX):], start, end))
        elif cuda and e.device_type == DeviceType.CUDA:
            work.append((e.name, start, end))
        elif not cuda and e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
            work.append((e.name, start, end))
    kind = "CUDA kernel time" if cuda else "CPU self time of aten ops (no GPU: the plumbing of the kernel table)"
    return work, stages_dev or stages_cpu, kind


def _op_times(prof, cuda: bool) -> Iterator[tuple[str, float]]:
    """(name, µs) of every kernel (CUDA: device time) or, on a CPU, every aten op (its self time); stages left out."""
    from torch.autograd import DeviceType

    for e in prof.events():
        if e.name.startswith(STAGE_PREFIX):
            continue
        if cuda and e.device_type == DeviceType.CUDA:
            yield e.name, float(e.time_range.end - e.time_range.start)
        elif not cuda and e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
            yield e.name, float(e.self_cpu_time_total)


def top_kernels(prof, cuda: bool, total_us: float) -> list[dict[str, Any]]:
    """The TOP_KERNELS names by device time (CPU: self time of the ops), with share and family."""
    totals: dict[str, list[float]] = {}
    for name, spent in _op_times(prof, cuda):
        entry = totals.setdefault(name, [0.0, 0])
        entry[0] += spent
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return [{"name": name[:160], "ms": round(us / 1e3, 4), "share": round(us / total_us, 4) if total_us else None,
             "calls": int(calls), "family": op_family(name)} for name, (us, calls) in ranked[:TOP_KERNELS]]


def families(prof, cuda: bool) -> tuple[dict[str, dict[str, float]], float]:
    """Time per op family over all kernels (CPU: ops' self time) and the total (µs)."""
    sums: dict[str, float] = {}
    for name, spent in _op_times(prof, cuda):
        family = op_family(name)
        sums[family] = sums.get(family, 0.0) + spent
    total = sum(sums.values())
    table = {f: {"ms": round(us / 1e3, 4), "share": round(us / total, 4) if total else None}
             for f, us in sorted(sums.items(), key=lambda kv: -kv[1])}
    return table, total


def _union(intervals: list[tuple[str, float, float]]) -> list[tuple[float, float, str, str]]:
    """Merged busy spans (start, end, first name, last name), sorted."""
    merged: list[list[Any]] = []
    for name, start, end in sorted(intervals, key=lambda x: x[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1], merged[-1][3] = end, name
        else:
            merged.append([start, end, name, name])
    return [tuple(m) for m in merged]


def _stage_at(stages: list[tuple[str, float, float]], t: float, *, before: bool) -> str:
    """The stage running at time t, else the last one ended before it (before=True) or the next one to start."""
    inside = [s for s in stages if s[1] <= t <= s[2]]
    if inside:
        return min(inside, key=lambda s: s[2] - s[1])[0]  # the innermost
    if before:
        done = [s for s in stages if s[2] <= t]
        return max(done, key=lambda s: s[2])[0] if done else "(start)"
    later = [s for s in stages if s[1] >= t]
    return min(later, key=lambda s: s[1])[0] if later else "(end)"


def idle_gaps(work, stages) -> dict[str, Any]:  # noqa: ANN001
    """Idle time between the device's busy spans, by the pair of stages around each gap, and the largest gaps."""
    spans = _union(work)
    if not spans:
        return {"span_ms": 0.0, "busy_ms": 0.0, "idle_ms": 0.0, "idle_fraction": None, "gaps": 0,
                "by_stage_boundary_ms": {}, "largest": []}
    busy = sum(end - start for start, end, _, _ in spans)
    span = spans[-1][1] - spans[0][0]
    gaps, by_boundary = [], {}
    for (s0, e0, _, last), (s1, e1, first, _) in zip(spans, spans[1:]):
        gap = s1 - e0
        if gap < GAP_FLOOR_US:
            continue
        after, before = _stage_at(stages, e0, before=True), _stage_at(stages, s1, before=False)
        key = after if after == before else f"{after} -> {before}"
        by_boundary[key] = by_boundary.get(key, 0.0) + gap
        gaps.append({"ms": round(gap / 1e3, 4), "after_stage": after, "before_stage": before,
                     "after": last[:100], "before": first[:100]})
    gaps.sort(key=lambda g: -g["ms"])
    idle = span - busy
    return {"span_ms": round(span / 1e3, 3), "busy_ms": round(busy / 1e3, 3), "idle_ms": round(idle / 1e3, 3),
            "idle_fraction": round(idle / span, 4) if span else None, "gaps": len(gaps),
            "by_stage_boundary_ms": {k: round(v / 1e3, 3) for k, v in sorted(by_boundary.items(), key=lambda kv: -kv[1])},
            "largest": gaps[:LARGEST_GAPS]}


def analyse(prof, cuda: bool) -> dict[str, Any]:
    work, stages, kind = _intervals(prof, cuda)
    family_table, total_us = families(prof, cuda)
    return {"time_kind": kind, "total_ms": round(total_us / 1e3, 3), "top": top_kernels(prof, cuda, total_us),
            "families": family_table, "idle": idle_gaps(work, stages),
            "stages_seen": sorted({s[0] for s in stages}),
            "kernels_note": None if work else "no kernels recorded (on a GPU: CUPTI unavailable to torch.profiler?)"}


def all_threads_config():  # noqa: ANN201
    """(experimental config that records every thread, note): the engine's stages and kernel launches run on its
    device thread, which a default torch.profiler session (this thread only) does not see."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True), None
    except (ImportError, TypeError) as exc:  # an older torch: kernels are still recorded, stage labels may be missing
        return None, f"profile_all_threads unavailable ({type(exc).__name__}): CPU ops of other threads are missing"


def _chunk_inputs(plan, media: Path):  # noqa: ANN001, ANN202
    """(video path or frames, speech of one chunk, landmarks): one 16-frame chunk of the demo clip, decoded and
    encoded by the pipeline as in a real job (--quick: synthetic frames, no file)."""
    import gpu_measure as m

    seconds = CHUNK_FRAMES / 25
    video, speech, landmarks = m.demo_inputs(media, seconds, plan.quick)
    return video, speech[: int(seconds * 16000)], landmarks


def measure_profile(plan, budget, emit, *, media: Path) -> None:  # noqa: ANN001
    """Profile one reference chunk (eager-serial) and one fast chunk (optimized), each at the largest resolution."""
    import tempfile
    from dataclasses import replace

    import gpu_measure as m

    from engine.pipeline.device import choose_placement
    from engine.pipeline.faces import LandmarkArraySource

    cuda = plan.device.startswith("cuda")
    placement = choose_placement(plan.device, "fp32" if plan.quick else "auto")
    resolution = plan.resolutions[0]  # 512 on a GPU
    try:
        video, speech, landmarks = _chunk_inputs(plan, media)
    except FileNotFoundError as exc:
        emit({"kind": "profile", "skipped": str(exc)})
        return
    variants = {v.name: v for v in m.pipeline_variants("torch")}
    cases = (("reference", variants["eager-serial"]), ("fast", variants["optimized"]))
    settings = {"steps": 1, "guidance": 1.0} if plan.quick else {}
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    config, config_note = all_threads_config()
    with tempfile.TemporaryDirectory(prefix="gpu-check-profile-") as tmp:
        models = replace(m._pipeline_models(plan, placement, Path(tmp)), resolution=resolution)
        for preset, variant in cases:
            base = {"kind": "profile", "preset": preset, "variant": variant.name, "resolution": resolution,
                    "frames": int(len(landmarks))}
            if not budget.fits(CASE_ESTIMATE_S if not plan.quick else 2.0):
                emit({**base, "skipped": f"budget: {budget.left():.0f} s left"})
                continue
            try:
                sync_obj, _, _ = m._make_sync(models, placement, variant)
                out = None if plan.quick else Path(tmp) / f"{preset}.mp4"
                if not plan.quick:  # autotuning, allocator growth and lazy loads stay out of the profile (same
                    # shapes, one denoising step: the warm-up need not cost the reference preset's twenty)
                    sync_obj(video, speech, out, preset=preset, face=LandmarkArraySource(landmarks), steps=1)
                m.sync(plan.device)
                with torch.profiler.profile(activities=activities, experimental_config=config) as prof:
                    t0 = time.perf_counter()
                    result = sync_obj(video, speech, out, preset=preset, face=LandmarkArraySource(landmarks),
                                      **settings)
                    m.sync(plan.device)
                    wall = time.perf_counter() - t0
                analysis = analyse(prof, cuda)
                host_io = {k: round(v, 4) for k, v in dict(result.timings).items()
                           if k.split("_")[0] in HOST_VIDEO_STAGES}  # decode, encode (not vae_encode)
                emit({**base, "wall_s": round(wall, 3), "frames": result.num_frames, **analysis,
                      "host_video_io_s": host_io, "profiler_note": config_note,
                      "note": "video decode/encode run on the host (PyAV): their time is host_video_io_s, not a "
                              "kernel family" if not host_io else None})
                del sync_obj, prof
            except Exception as exc:  # a failing case is a result, not the end of the step
                emit({**base, "error": f"{type(exc).__name__}: {exc}"[:500]})
            m.free(plan.device)
