"""`engine batch` before any work: manifest validation with line numbers, settings, skip records, retry limits.

No model loads and no cluster starts here: every check below must happen before either.
"""

from __future__ import annotations

import json

import pytest

from cluster_helpers import demo_cuts, write_manifest


@pytest.fixture(scope="module")
def cuts(media, tmp_path_factory):
    return demo_cuts(media, tmp_path_factory.mktemp("cuts"))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model loads or a Ray cluster is contacted."""
    import engine.cluster.options
    import engine.cluster.ray_env

    def forbidden(*a, **k):
        raise AssertionError("work started before the manifest was validated")

    monkeypatch.setattr(engine.cluster.options.ModelOptions, "load", forbidden)
    monkeypatch.setattr(engine.cluster.ray_env, "connected", forbidden)


def _job(cuts, name="demo1", **extra):
    video, audio = cuts[name]
    return {"video": str(video), "audio": str(audio), **extra}


@pytest.mark.parametrize("ray", [False, True])
def test_missing_file_and_bad_setting_fail_before_any_work_with_both_line_numbers(cuts, tmp_path, no_work, capsys,
                                                                                 ray):
    from engine.cli import main

    rows = [_job(cuts, output=str(tmp_path / "a.mp4")),
            {**_job(cuts, output=str(tmp_path / "b.mp4")), "video": str(tmp_path / "missing.mp4")},
            _job(cuts, "demo2", output=str(tmp_path / "c.mp4")),
            _job(cuts, output=str(tmp_path / "d.mp4"), steps=0)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", rows)
    argv = ["batch", str(manifest), "--model", "tiny-random", "--device", "cpu", "--no-progress"]
    code = main(argv + (["--ray", "local"] if ray else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "2 bad line(s) of 4 (lines 2, 4)" in err
    assert "line 2: InvalidInputError:" in err and "missing.mp4" in err and "no such file" in err
    assert "line 4: steps: expected 1..999, found 0" in err
    assert "line 1:" not in err and "line 3:" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]  # no output, no report


def test_csv_reports_every_kind_of_bad_line(cuts, tmp_path, no_work):
    from engine.cluster.manifest import load_manifest
    from engine.errors import InvalidInputError

    video, audio = cuts["demo1"]
    text = "\n".join([
        "video,audio,output,steps,strict_faces,crf,length",
        f"{video},{audio},ok.mp4,2,true,,",  # line 2: fine (relative output: beside the manifest)
        "",
        f"{video},{audio},o3.mp4,abc,,,",  # line 4: not an integer
        f"{video},{audio},o5.mp4,,maybe,,",  # line 5: not a boolean
        f"{video},{audio},ok.mp4,,,,",  # line 6: another line's output
        f"{video},{audio},{video},,,,",  # line 7: writes over its own input
        f"{video},{audio},o8.mp4,,,99,",  # line 8: crf out of range
        f"{video},{audio}",  # line 9: too few columns
        f"{audio},{video},o10.mp4,,,,",  # line 10: a wav is not a video
        f"{video},{audio},o11.avi,,,,",  # line 11: not an mp4 name
    ]) + "\n" + f'{video},{audio},o12.mp4,,,,longest\n'  # line 12: an unknown length policy
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        load_manifest(manifest)
    message = str(info.value)
    assert "(lines 4, 5, 6, 7, 8, 9, 10, 11, 12)" in message
    expected = {4: "steps: expected an integer, found 'abc'", 5: "strict_faces: expected true or false",
                6: "found the output of line 2", 7: "expected a path that is not an input", 8: "crf: expected an int",
                9: "expected 7 columns", 10: "video", 11: "name ending in .mp4",
                12: "length: expected one of ('audio', 'official'), found 'longest'"}
    lines = {int(line.split(":")[0].split()[1]): line for line in message.splitlines()[1:]}
    for number, fragment in expected.items():
        assert fragment in lines[number], (number, lines[number])


def test_settings_merge_and_paths_relative_to_the_manifest(cuts, tmp_path, no_work):
    from engine.cluster.manifest import JobSettings, load_manifest

    video, audio = cuts["demo2"]
    (tmp_path / "in").mkdir()
    for src in (video, audio):
        (tmp_path / "in" / src.name).write_bytes(src.read_bytes())
    track = tmp_path / "in" / "track.json"
    track.write_text("{}")
    rows = [{"id": "ep1-fr", "video": f"in/{video.name}", "audio": f"in/{audio.name}", "output": "out1.mp4"},
            {"video": f"in/{video.name}", "audio": f"in/{audio.name}", "output": "out2.mp4", "preset": "fast",
             "seed": 3, "deepcache": 0, "face": "in/track.json", "strict-faces": True, "crf": 20, "guidance": 2,
             "length": "official"}]
    jobs = load_manifest(write_manifest(tmp_path / "jobs.jsonl", rows), JobSettings(steps=4, face="mediapipe"))
    first, second = jobs
    assert (first.id, second.id) == ("ep1-fr", "line 2")
    assert first.video == str(tmp_path / "in" / video.name) and second.output == str(tmp_path / "out2.mp4")
    assert first.settings.sync_config().steps == 4 and first.settings.face == "mediapipe"
    config = second.settings.sync_config()
    assert (config.steps, config.seed, config.deepcache_interval, config.guidance_scale) == (4, 3, None, 2.0)
    assert second.settings.face == str(track) and second.settings.strict_faces and second.settings.crf == 20
    assert first.settings.length == "audio" and second.settings.length == "official"
    assert (first.frames_estimate, second.frames_estimate) == (8, 10)  # 0.32 s of speech: as long, or official


def test_a_record_beside_the_output_makes_reruns_skip_until_something_changes(cuts, tmp_path):
    from engine.cluster.batch import plan
    from engine.cluster.fingerprint import ContentHashes, sidecar_path, write_sidecar
    from engine.cluster.manifest import load_manifest
    from engine.cluster.options import ModelOptions

    video, audio = cuts["demo1"]
    speech = tmp_path / "speech.wav"
    speech.write_bytes(audio.read_bytes())
    manifest = write_manifest(tmp_path / "jobs.jsonl", [{"video": str(video), "audio": str(speech),
                                                          "output": "out.mp4", "seed": 5}])
    model = ModelOptions(model="tiny-random", device="cpu")

    def reasons(model=model, path=manifest):
        todo, skipped = plan(load_manifest(path), model)
        return [o.reason for o in skipped] or [None for _ in todo]

    assert reasons() == [None]  # no output yet
    (tmp_path / "out.mp4").write_bytes(b"an output made earlier")
    job = load_manifest(manifest)[0]
    todo, _ = plan([job], model)
    write_sidecar(job, todo[0].fingerprint, ContentHashes(), {"num_frames": 10})
    assert reasons() == ["output is up to date"]
    record = json.loads(sidecar_path(tmp_path / "out.mp4").read_text())
    assert record["settings"]["config"]["seed"] == 5 and record["inputs"]["audio"]["bytes"] == speech.stat().st_size
    assert plan([job], model, force=True)[0]  # --force runs it anyway
    assert reasons(model=ModelOptions(model="tiny-random", device="cpu", dtype="fp16")) == [None]  # settings
    other = write_manifest(tmp_path / "other.jsonl", [{"video": str(video), "audio": str(speech),
                                                       "output": "out.mp4", "seed": 6}])
    assert reasons(path=other) == [None]
    speech.write_bytes(speech.read_bytes()[:-2] + b"\x01\x02")  # edited in place: same name, other content
    assert reasons() == [None]


def test_ray_without_the_extra_exits_7_naming_it(cuts, tmp_path, monkeypatch, capsys):
    import engine.extras
    from engine.cli import main

    monkeypatch.setattr(engine.extras, "missing_modules", lambda name: ["ray"] if name == "ray" else [])
    manifest = write_manifest(tmp_path / "jobs.jsonl", [_job(cuts, output="o.mp4")])
    assert main(["batch", str(manifest), "--ray", "local"]) == 7
    err = capsys.readouterr().err
    assert "engine batch --ray: expected the [ray] extra" in err and 'pip install -e ".[ray]"' in err


def test_a_job_whose_worker_dies_is_retried_up_to_the_limit_then_failed_with_the_reason():
    from engine.cluster.batch import PendingJob
    from engine.cluster.manifest import BatchJob, JobSettings
    from engine.cluster.progress import BatchProgress
    from engine.cluster.ray_batch import RayOptions, _Dispatcher, _Worker

    class Actor:  # what _Dispatcher touches on a dead worker: info.remote() to wait for its restart
        class info:
            @staticmethod
            def remote():
                return object()

    job = BatchJob(line=3, id="line 3", video="v.mp4", audio="a.wav", output="o.mp4", settings=JobSettings())
    pending = PendingJob(job, fingerprint={})
    workers = [_Worker("worker-0", Actor(), 1, state="ready", info={"pid": 11}),
               _Worker("worker-1", Actor(), 1, state="ready", info={"pid": 12})]
    dispatcher = _Dispatcher(None, workers, None, [], RayOptions(max_attempts=2), BatchProgress([], enabled=False),
                             None)
    dispatcher._worker_died(pending, workers[0], RuntimeError("SIGKILL"))
    assert list(dispatcher.queue) == [pending] and pending.attempt == 2 and not dispatcher.outcomes
    assert workers[0].state == "reviving" and pending.tried == {"worker-0"}
    dispatcher.queue.clear()
    dispatcher._worker_died(pending, workers[1], RuntimeError("SIGKILL"))
    (outcome,) = dispatcher.outcomes
    assert outcome.status == "failed" and outcome.error == "worker died" and outcome.attempts == 2
    assert "worker-1 (pid 12) ended while running it" in outcome.reason and "gave up after 2" in outcome.reason
    assert len(outcome.history) == 2 and "worker-0 (pid 11)" in outcome.history[0]
    assert not dispatcher.queue
