"""Returning freed heap memory to the OS between chunks, so long runs keep a flat RSS."""

from __future__ import annotations

import ctypes

_malloc_trim = None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    glibc keeps the freed blocks of a thread's varying-size tensors (the live whisper
    encode grows with the segment) in that thread's arena: measured without this, a
    live stream's RSS crept from 500 to 1070 MiB in 150 s; with it, it stays flat.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory so far (getrusage ru_maxrss, KiB on Linux) in MiB: this process, and the largest of
    its waited-for child processes (0 when none; Ray workers are the raylet's children, not ours)."""
    import resource

    kib = 1024.0
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
            "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1)}


def describe_peak_rss(peak: dict[str, float]) -> str:
    """'peak RSS 2900 MiB' (plus the largest child's when there was one), for a command's summary line."""
    text = f"peak RSS {peak['self']:.0f} MiB"
    return text + (f" (largest child process {peak['children']:.0f} MiB)" if peak.get("children") else "")
