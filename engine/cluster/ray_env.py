"""Connecting to Ray: `local` (a private cluster for this command), `auto` / `ray://...` (an existing one).

Only this module and the runners import `ray`, and only after `engine.extras.require("ray")` has said
it is installed, so every other command works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from engine.errors import InvalidInputError
from engine.extras import require

log = logging.getLogger(__name__)

DEFAULT = "default"  # `--ray` with no address: Ray's own discovery (RAY_ADDRESS, a running cluster, else a new one)


def check_address(address: str) -> str:
    """'local' | 'auto' | 'default' | 'ray://host:port' | 'host:port' (a head's GCS address)."""
    ok = address in ("local", "auto", DEFAULT) or address.startswith("ray://") or (
        ":" in address and address.rsplit(":", 1)[1].isdigit())
    if not ok:
        raise InvalidInputError(f"--ray: expected local, auto, ray://HOST:PORT or HOST:PORT, found {address!r}")
    return address


@contextlib.contextmanager
def connected(address: str, *, what: str) -> Iterator[object]:
    """Yield the `ray` module connected to `address`; disconnect at the end (a private cluster stops).

    A process already connected (ray.is_initialized(): a test, a notebook) keeps its connection.
    """
    require("ray", what=what)
    if address == "local":
        private_cluster_environment()
    import ray

    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address != DEFAULT:
        kwargs["address"] = address
    log.info("connecting to Ray (%s)", address)
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def private_cluster_environment() -> None:
    """A private single-machine cluster listens on loopback only and sends no usage report.

    Ray binds a new cluster to the machine's network address unless its single-machine mode is on
    (the variable below; read when `ray` is first imported, and by the processes Ray starts).
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def actor_layout(ray, *, num_gpus: float | None, num_cpus: float, requested: int | None) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU (`num_gpus` each, default 1 where the cluster has GPUs), else one
    per `num_cpus` CPUs; `requested` overrides the count (beyond what fits, the rest wait for resources)."""
    from engine.errors import expect

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    per_actor = num_gpus if num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if per_actor > 0:
        fit = int(gpus // per_actor)
        expect(fit >= 1, InvalidInputError, "--num-gpus", f"at most the cluster's {gpus:g} GPUs", per_actor)
    else:
        fit = max(1, int(cpus // num_cpus))
    count = requested or fit
    if count > fit:
        log.warning("%d actors asked for, the cluster fits %d now; the rest wait for resources", count, fit)
    return count, per_actor


# Phrases of Ray's actor-death messages that mean memory: its memory monitor's kill ("OutOfMemoryError", "memory
# pressure", "OOM killer"), or an abort (exit 134, SIGABRT) that a failed allocation ends in.
MEMORY_DEATH_MARKERS = ("outofmemoryerror", "out of memory", "memory pressure", "oom killer", "high memory usage")
ABORT_MARKERS = ("exit code 134", "sigabrt", "std::bad_alloc")


def actor_death_cause(exc: BaseException) -> str:
    """A plain cause for a dead Ray actor (`RayActorError` and subclasses) from its message, for the log."""
    text = str(exc).lower()
    if any(marker in text for marker in MEMORY_DEATH_MARKERS):
        return ("killed for memory (Ray's memory monitor or the kernel's OOM killer): each replica holds a model "
                "and its sessions' buffers; use fewer --replicas or --max-sessions, more memory per node, or "
                "--backend torch")
    if any(marker in text for marker in ABORT_MARKERS):
        return "aborted (exit 134, SIGABRT; often a failed memory allocation): see the replica's log under Ray's logs"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"
