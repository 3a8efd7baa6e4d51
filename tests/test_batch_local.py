"""`engine batch` on this machine: one loaded model for every job, outputs equal to `engine run`, bad inputs
fail only their own job, re-runs skip what is done."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster_helpers import FAST, LOSSLESS, decoded, demo_cuts, micro_model_dir, write_manifest

FAST_ARGS = ["--steps", "1", "--guidance", "1", "--deepcache", "0", "--seed", "7", "--face", "mediapipe", "--crf",
             str(LOSSLESS)]


@pytest.fixture(scope="module")
def inputs(media, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-local")
    return micro_model_dir(root), demo_cuts(media, root), root


def _faceless_video(path, frames: int = 8):
    from engine.media import VideoWriter

    with VideoWriter(path, 360, 640, preset="ultrafast") as writer:
        for _ in range(frames):
            writer.write(np.zeros((640, 360, 3), np.uint8))
    return path


def test_local_batch_equals_engine_run_skips_when_done_and_fails_only_the_bad_job(inputs, tmp_path, capsys):
    from engine.cli import main
    from engine.pipeline.sdk import LipSync

    model, cuts, _ = inputs
    black = _faceless_video(tmp_path / "black.mp4")
    rows = [{"video": str(cuts["demo1"][0]), "audio": str(cuts["demo1"][1]), "output": "one.mp4"},
            {"video": str(black), "audio": str(cuts["demo1"][1]), "output": "faceless.mp4"},
            {"video": str(cuts["demo2"][0]), "audio": str(cuts["demo2"][1]), "output": "two.mp4", "seed": 3,
             "length": "official"}]
    manifest = write_manifest(tmp_path / "jobs.jsonl", rows)
    argv = ["batch", str(manifest), "--model", str(model), "--device", "cpu", *FAST_ARGS, "--no-progress"]
    assert main(argv) == 1  # one job failed
    out = capsys.readouterr().out
    assert "2 done, 0 skipped, 1 failed of 3 jobs" in out and "line 2 (line 2)" in out and "NoFaceError" in out

    report = json.loads((tmp_path / "jobs.jsonl.report.json").read_text())
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": 1} and report["frames"] == 8 + 10  # 0.32 s each: as long, official
    failed = report["jobs"][1]
    assert (failed["status"], failed["error"], failed["exit_code"]) == ("failed", "NoFaceError", 4)
    assert "expected a face" in failed["reason"]
    assert not (tmp_path / "faceless.mp4").exists() and not (tmp_path / "faceless.mp4.job.json").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"jobs.jsonl", "jobs.jsonl.report.json", "black.mp4", "one.mp4",
                                                    "one.mp4.job.json", "two.mp4", "two.mp4.job.json"}

    # line 1 against `engine run` itself, line 2 against the SDK call that `engine run` makes
    reference = tmp_path.parent / f"{tmp_path.name}-ref-one.mp4"
    assert main(["run", "--model", str(model), "--device", "cpu", "--video", str(cuts["demo1"][0]), "--audio",
                 str(cuts["demo1"][1]), "--output", str(reference), *FAST_ARGS, "--no-progress"]) == 0
    sync = LipSync.from_pretrained(str(model), device="cpu", face="mediapipe")
    reference_two = tmp_path.parent / f"{tmp_path.name}-ref-two.mp4"
    sync(cuts["demo2"][0], cuts["demo2"][1], reference_two, crf=LOSSLESS, length="official", **{**FAST, "seed": 3})
    for made, expected in (("one.mp4", reference), ("two.mp4", reference_two)):
        (frames, audio), (ref_frames, ref_audio) = decoded(tmp_path / made), decoded(expected)
        np.testing.assert_array_equal(frames, ref_frames, err_msg=made)
        np.testing.assert_array_equal(audio, ref_audio, err_msg=made)

    capsys.readouterr()
    assert main(argv) == 1  # the done jobs are skipped; the bad one runs (and fails) again
    assert "0 done, 2 skipped, 1 failed of 3 jobs" in capsys.readouterr().out
