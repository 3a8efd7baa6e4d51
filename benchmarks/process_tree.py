"""Run a command with a time limit and, when it ends or overruns, kill everything it started.

A timed-out step of benchmarks/gpu_check.py must not leave pytest, benchmarks/throughput.py or inductor's
compile workers holding the GPU and the CPUs while the next step runs. Each command starts in a new session
(its own process group); on the way out every descendant is found through /proc *before* anything is killed
(an orphan is re-parented to init and could not be found afterwards), and each process group among them is
sent SIGTERM, then SIGKILL. Linux only (the GPU machines are); elsewhere only the command's own group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

TERM_GRACE_S = 3.0  # SIGTERM to SIGKILL


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first), read from /proc; [] where /proc is absent."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(pid: int, grace_s: float = TERM_GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL, to the process groups of `pid` and of all its descendants; returns the groups."""
    groups = []
    for p in [pid, *descendants(pid)]:
        try:
            group = os.getpgid(p)
        except ProcessLookupError:
            continue
        if group not in groups and group != os.getpgid(0):  # never our own group
            groups.append(group)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if sig == signal.SIGTERM and groups:
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
                time.sleep(0.05)
    return groups


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_killable(command: list[str], timeout_s: float, **popen: Any) -> tuple[int | None, bool]:
    """Run `command` in its own session; (exit code or None, timed out). Whatever it started is killed at the end.

    `popen` is passed to subprocess.Popen (cwd, env, stdout, stderr...)."""
    proc = subprocess.Popen(command, start_new_session=True, **popen)
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # also on KeyboardInterrupt / SIGTERM of the caller
        kill_tree(proc.pid)
        proc.wait()
    return (None if timed_out else proc.returncode), timed_out
