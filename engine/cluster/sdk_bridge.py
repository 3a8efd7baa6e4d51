"""The one place batch work enters the SDK: `submit_job(sync, job)` -> a handle with `.result()`.

INTEGRATION FALLBACK (drop at integration): the engine core (issue 10) gives `LipSync.submit(...)
-> JobHandle`, through which concurrent jobs share the core's device thread and batching. Until it
lands, jobs run one at a time through the thread-safe-by-lock `sync.run` inside `submit_job`, and
the returned handle is already finished. Once `submit` exists on main, `submit_job` reduces to its
first branch and `_SERIAL` / `_Finished` go away; no caller changes.
"""

from __future__ import annotations

import threading

from engine.cluster.manifest import BatchJob

_SERIAL = threading.Lock()  # fallback only: today's sync.run is not safe from several threads at once


class _Finished:
    """A JobHandle whose job already ran (fallback only)."""

    def __init__(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error

    def result(self, timeout: float | None = None):
        if self._error is not None:
            raise self._error
        return self._result

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


def submit_job(sync, job: BatchJob, progress=None):
    """Queue `job` on the loaded `sync` (its engine core batches concurrent jobs); returns a JobHandle."""
    s = job.settings
    kwargs = dict(config=s.sync_config(), face=s.face, strict_faces=s.strict_faces, crf=s.crf, progress=progress)
    if hasattr(sync, "submit"):
        return sync.submit(job.video, job.audio, job.output, **kwargs)
    with _SERIAL:  # FALLBACK: one job at a time until the engine core's submit() lands
        try:
            return _Finished(sync.run(job.video, job.audio, job.output, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised by .result(), as a JobHandle does
            return _Finished(error=exc)
