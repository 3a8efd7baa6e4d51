"""The one place batch work enters the SDK: `submit_job(sync, job)` -> the SDK's JobHandle.

`LipSync.submit` queues the job on the engine core and returns at once, so the jobs a worker holds
share its device thread and are batched where their shapes agree.
"""

from __future__ import annotations

from engine.cluster.manifest import BatchJob


def submit_job(sync, job: BatchJob, progress=None):
    """Queue `job` on the loaded `sync`; returns its JobHandle (`result()`, `cancel()`, `done()`)."""
    s = job.settings
    return sync.submit(job.video, job.audio, job.output, config=s.sync_config(), face=s.face,
                       strict_faces=s.strict_faces, crf=s.crf, length=s.length, progress=progress,
                       output_audio=s.output_audio)
