"""Idempotent batches: a job manifest beside each output records what produced it.

`<output>.job.json` holds the inputs' content hashes (sha256 + size), the settings that change pixels
(model, device, dtype, backend, the resolved SyncConfig, face source, strict faces, crf) and the
output's own hash. A job is skipped when its output exists and that record matches all three; any
difference (an input edited in place, another seed, an output touched by hand) re-runs the job.
The record is written atomically after the output has been renamed into place, so a worker killed
between the two leaves an output without a record: the job simply runs again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from engine.cluster.manifest import FACE_NAMES, SIDECAR_SUFFIX, BatchJob, sidecar_path  # noqa: F401 - re-exported
from engine.cluster.options import ModelOptions

FORMAT = "latentsync-engine batch job v1"
FILE_MODE = 0o644  # records sit beside outputs, often on shared storage: readable like them


class ContentHashes:
    """sha256 of files, each read once per (path, size, mtime): a catalogue reuses one video for many languages."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], dict] = {}

    def of(self, path: str | os.PathLike) -> dict:
        from engine.weights.checkpoints import sha256_file

        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = {"sha256": sha256_file(path), "bytes": st.st_size}
        return self._cache[key]


def job_fingerprint(job: BatchJob, model: ModelOptions, hashes: ContentHashes) -> dict:
    """{"inputs": {...content hashes...}, "settings": {...}}: equal fingerprints make equal outputs."""
    settings = job.settings
    inputs = {"video": hashes.of(job.video), "audio": hashes.of(job.audio)}
    face = settings.face
    if face not in FACE_NAMES:
        inputs["face_track"] = hashes.of(face)
        face = "track file"
    return {
        "inputs": inputs,
        "settings": {**model.identity(), "config": asdict(settings.sync_config()), "face": face,
                     "strict_faces": settings.strict_faces, "crf": settings.crf, "length": settings.length,
                     "output_audio": settings.output_audio},
    }


def read_sidecar(job: BatchJob) -> dict | None:
    try:
        data = json.loads(sidecar_path(job.output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def up_to_date(job: BatchJob, fingerprint: dict, hashes: ContentHashes) -> tuple[bool, str]:
    """(skip?, why): done only when the output exists and its record matches inputs, settings and output."""
    if not os.path.isfile(job.output):
        return False, "no output yet"
    record = read_sidecar(job)
    if record is None:
        return False, f"output exists without a readable {SIDECAR_SUFFIX} record"
    if record.get("inputs") != fingerprint["inputs"]:
        return False, "an input changed since the output was made"
    if record.get("settings") != fingerprint["settings"]:
        return False, "the settings changed since the output was made"
    if record.get("output") != hashes.of(job.output):
        return False, "the output file changed since it was made"
    return True, "output is up to date"


def write_sidecar(job: BatchJob, fingerprint: dict, hashes: ContentHashes, result: dict) -> Path:
    """Record a finished job beside its output (atomic; after the output is in place)."""
    import engine
    from engine.weights.checkpoints import write_json

    path = sidecar_path(job.output)
    write_json({
        "format": FORMAT,
        **fingerprint,
        "output": hashes.of(job.output),
        "paths": {"video": job.video, "audio": job.audio, "output": job.output},
        "result": result,
        "engine_version": engine.__version__,
    }, path)
    os.chmod(path, FILE_MODE)
    return path
