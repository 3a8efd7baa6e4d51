"""What `engine serve --ray` deploys: the replicas' server settings and layout (no `ray` needed).

Its own module so that `engine.cluster.serving` (the entry point) imports `engine.cluster.serve_app` (the Ray
application) and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.cluster.options import ModelOptions
from engine.errors import InvalidInputError, expect
from engine.pipeline.config import SyncConfig, resolve_config


@dataclass(frozen=True)
class ServeSpec:
    """Everything a replica needs to build its server, plus how many replicas and where they run."""

    model: ModelOptions
    videos: tuple[tuple[str, str], ...] = ()  # (name, face video path)
    avatars: tuple[tuple[str, str], ...] = ()  # (name, prepared avatar folder)
    sync: SyncConfig = field(default_factory=lambda: resolve_config("reference"))
    replicas: int | None = None  # None: one per GPU (or per num_cpus CPUs)
    num_gpus: float | None = None  # per replica; None: 1 where the cluster has GPUs, else 0
    num_cpus: float = 1.0  # per replica
    max_sessions: int = 2  # per replica
    max_queued_seconds: float = 30.0
    jpeg_quality: int = 90
    replica_host: str | None = None  # where replicas listen for the ingress; None: their node's IP
    max_restarts: int = 3  # times Ray restarts a dead replica
    idle_timeout_s: float = 60.0  # engine serve --idle-timeout, per replica

    def __post_init__(self) -> None:
        names = [name for name, _ in self.videos + self.avatars]
        expect(bool(names) and len(set(names)) == len(names), InvalidInputError, "sources",
               "at least one, with unique names", names)
        expect(self.replicas is None or self.replicas >= 1, InvalidInputError, "--replicas", ">= 1", self.replicas)
        expect(self.max_sessions >= 1, InvalidInputError, "--max-sessions", ">= 1", self.max_sessions)
        expect(self.num_cpus > 0, InvalidInputError, "--num-cpus", "> 0", self.num_cpus)

    def load(self):
        """In a replica: (loaded LipSync, {name: Avatar | video path}), as `engine serve` loads them."""
        from engine.stream import Avatar

        sources: dict = {name: Avatar(path) for name, path in self.avatars}
        sources.update(dict(self.videos))
        return self.model.load(), sources
