"""`engine batch --ray` on a private local Ray cluster (loopback only, 2 CPUs, stopped at the end).

Two long-lived actors load the model once each; their outputs must equal `engine run`'s (the same SDK
call in this process) bit for bit, a re-run must skip every job, and a job whose worker is killed
mid-run must be retried on the other actor (or, past the attempt limit, fail with the reason).
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from cluster_helpers import FAST, LOSSLESS, decoded, demo_cuts, local_cluster, micro_model_dir, write_manifest

pytest.importorskip("ray")

JOBS = [("demo1", "demo1", {}), ("demo2", "demo2", {"seed": 3}), ("demo1", "demo2", {"guidance": 1.5}),
        ("demo2", "demo1", {"steps": 2})]  # (video, speech, settings over FAST) per manifest line


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as ray:
        yield ray


@pytest.fixture(scope="module")
def inputs(media, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-batch")
    return micro_model_dir(root), demo_cuts(media, root), root


def _rows(cuts, out_dir, jobs=JOBS):
    return [{"video": str(cuts[v][0]), "audio": str(cuts[a][1]), "output": str(out_dir / f"job{i}.mp4"), **extra}
            for i, (v, a, extra) in enumerate(jobs, start=1)]


@pytest.fixture(scope="module")
def references(inputs):
    """What `engine run` makes for each job: its SDK call with the same settings, in this process.

    With one torch thread, as each 1-CPU actor runs (Ray sets OMP_NUM_THREADS to an actor's CPUs):
    float reductions split over another thread count can move a rare pixel by one step.
    """
    import torch

    from engine.pipeline.sdk import LipSync

    model, cuts, root = inputs
    sync = LipSync.from_pretrained(str(model), device="cpu", face="mediapipe")
    made = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for line, row in enumerate(_rows(cuts, root / "reference"), start=1):
            (root / "reference").mkdir(exist_ok=True)
            settings = {**FAST, **{k: v for k, v in row.items() if k not in ("video", "audio", "output")}}
            sync(row["video"], row["audio"], row["output"], crf=LOSSLESS, **settings)
            made[line] = decoded(row["output"])
    finally:
        torch.set_num_threads(threads)
    return made


def _batch(manifest, model, **ray_options):
    from engine.cluster.batch import run_batch
    from engine.cluster.manifest import JobSettings
    from engine.cluster.options import ModelOptions
    from engine.cluster.ray_batch import RayOptions

    on_event = ray_options.pop("on_event", None)
    return run_batch(str(manifest), model=ModelOptions(model=str(model), device="cpu", face="mediapipe"),
                     defaults=JobSettings(face="mediapipe", crf=LOSSLESS, **FAST), progress=False, on_event=on_event,
                     ray=RayOptions(address="local", workers=2, jobs_per_worker=1, **ray_options))


def _assert_equal_to_reference(path, reference) -> None:
    frames, audio = decoded(path)
    np.testing.assert_array_equal(frames, reference[0], err_msg=str(path))
    np.testing.assert_array_equal(audio, reference[1], err_msg=str(path))


def test_four_jobs_on_two_actors_equal_engine_run_and_a_rerun_skips_all(cluster, inputs, references, tmp_path):
    model, cuts, _ = inputs
    manifest = write_manifest(tmp_path / "jobs.jsonl", _rows(cuts, tmp_path))
    report = _batch(manifest, model)
    assert report.counts() == {"done": 4, "skipped": 0, "failed": 0}, report.summary()
    assert report.workers == 2 and {o.worker for o in report.outcomes} == {"worker-0", "worker-1"}
    assert report.startup_seconds > 0 and report.frames == 4 * 8
    for line, outcome in enumerate(report.outcomes, start=1):
        assert outcome.attempts == 1 and outcome.frames == 8  # 0.32 s of speech: as long as the speech (the default length)
        _assert_equal_to_reference(outcome.output, references[line])

    again = _batch(manifest, model)
    assert again.counts() == {"done": 0, "skipped": 4, "failed": 0}
    assert again.runner.startswith("none") and again.workers == 0  # no actor was even started
    assert all(o.reason == "output is up to date" for o in again.outcomes)


def _kill_first_start_of(line: int, killed: list):
    def on_event(event):
        if event[0] == "start" and event[1] == line and not killed:
            killed.append(event[3])
            os.kill(event[4], signal.SIGKILL)  # the worker process dies mid-job
    return on_event


def test_a_killed_actors_job_is_retried_on_the_other_and_the_batch_completes(cluster, inputs, references, tmp_path):
    model, cuts, _ = inputs
    manifest = write_manifest(tmp_path / "jobs.jsonl", _rows(cuts, tmp_path, JOBS[:2]))
    killed: list[str] = []
    report = _batch(manifest, model, max_attempts=2, on_event=_kill_first_start_of(1, killed))
    assert killed, "the test never saw line 1 start"
    assert report.counts() == {"done": 2, "skipped": 0, "failed": 0}, report.summary()
    first = report.outcomes[0]
    assert first.attempts == 2 and first.worker != killed[0]
    assert len(first.history) == 1 and first.history[0].startswith(f"worker died: {killed[0]}")
    for line, outcome in enumerate(report.outcomes, start=1):
        _assert_equal_to_reference(outcome.output, references[line])
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["job1.mp4", "job1.mp4.job.json", "job2.mp4", "job2.mp4.job.json", "jobs.jsonl"]


@pytest.mark.slow
def test_past_the_attempt_limit_a_killed_job_fails_with_the_reason_and_the_rest_completes(cluster, inputs,
                                                                                       references, tmp_path):
    model, cuts, _ = inputs
    manifest = write_manifest(tmp_path / "jobs.jsonl", _rows(cuts, tmp_path, JOBS[:2]))
    killed: list[str] = []
    report = _batch(manifest, model, max_attempts=1, on_event=_kill_first_start_of(1, killed))
    assert report.counts() == {"done": 1, "skipped": 0, "failed": 1}, report.summary()
    failed, done = report.outcomes
    assert failed.error == "worker died" and "gave up after 1 attempt(s)" in failed.reason
    assert killed[0] in failed.reason and not os.path.exists(failed.output)
    _assert_equal_to_reference(done.output, references[2])
