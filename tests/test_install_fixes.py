"""Issue 22: a newcomer's install. Missing extras are typed errors, third-party INFO logging only with -v, bench
reports skipped backends and writes to the engine cache, the dub keeps the speech's own audio, doctor warns about
CUDA libraries without a GPU, auto's memory rule, ONNX Runtime's arena settings, the --reference check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BackendUnavailableError
from engine.extras import MissingExtraError, import_optional, missing_module_error

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ missing extras
def test_import_optional_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of a None entry fails as if not installed
    with pytest.raises(MissingExtraError) as info:
        import_optional("matplotlib", "plot", what="a plot")
    assert "[plot]" in str(info.value) and 'pip install -e ".[plot]"' in str(info.value)
    assert info.value.exit_code == BackendUnavailableError.exit_code == 7


@pytest.mark.parametrize(("module", "extra"), [("onnxruntime", "[cpu]"), ("tensorrt", "[trt]"), ("ray", "[ray]"),
                                               ("websockets", "[serve]"), ("ai_edge_litert", "[face]"),
                                               ("fastapi.responses", "[ray]"), ("onnxscript", "core dependency")])
def test_every_optional_module_maps_to_its_extra(module, extra):
    error = missing_module_error(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert error is not None and extra in str(error) and error.exit_code == 7


def test_cli_turns_an_unguarded_missing_module_into_exit_7(monkeypatch, capsys):
    """The CLI's backstop: a lazy import no `require` guarded still names the extra, with no traceback."""
    import engine.cli.doctor as doctor

    def collect():
        import websockets  # noqa: F401 - blocked below

    monkeypatch.setitem(sys.modules, "websockets", None)
    monkeypatch.setattr(doctor, "collect", collect)
    from engine.cli import main

    assert main(["doctor"]) == 7
    err = capsys.readouterr().err
    assert "MissingExtraError" in err and "[serve]" in err and "Traceback" not in err


def test_ort_executor_without_onnxruntime_is_typed(monkeypatch, tmp_path):
    import torch

    from engine.backends.ort_backend import OrtExecutor

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"\[cpu\]"):
        OrtExecutor("audio_encoder", tmp_path / "x.onnx", None, torch.device("cpu"))


# ------------------------------------------------------------------ logging
def _log_lines(verbose: bool) -> str:
    code = ("import logging; from engine.cli.logs import configure; configure(%r); "
            "logging.getLogger('onnxscript.optimizer').info('THIRD'); logging.getLogger('torch.onnx').info('TORCH'); "
            "logging.getLogger('onnx_ir').warning('WARNED'); logging.getLogger('engine.x').info('OWN')") % verbose
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT).stderr


def test_third_party_info_only_with_verbose():
    quiet, loud = _log_lines(False), _log_lines(True)
    assert "OWN" in quiet and "WARNED" in quiet and "THIRD" not in quiet and "TORCH" not in quiet
    assert all(word in loud for word in ("OWN", "WARNED", "THIRD", "TORCH"))


def test_engine_export_tiny_random_prints_at_most_40_lines(tiny_random_export):
    """The quick start's `engine export --model tiny-random` (every network; conftest runs it once per test run as a
    user does, in a private engine cache): short, quiet, nothing written in the working directory."""
    assert len(tiny_random_export.lines) <= 40, "\n".join(tiny_random_export.lines)
    assert set(tiny_random_export.written) == {"unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder"}
    assert list(tiny_random_export.cwd.iterdir()) == []


# ------------------------------------------------------------------ engine bench
def test_bench_reports_a_missing_backend_and_writes_to_the_engine_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTSYNC_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "cache" if False else tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    from engine.cli import main

    code = main(["bench", "--model", "tiny-random", "--networks", "audio_encoder", "--device", "cpu",
                 "--backends", "torch,onnxruntime", "--iters", "1", "--warmup", "0", "--no-plot", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "not run: onnxruntime skipped" in out and "[cpu]" in out
    report = tmp_path / "cache" / "bench" / "backends.json"
    rows = json.loads(report.read_text())["results"]
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"] and "skipped" in rows[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing in the working directory


# ------------------------------------------------------------------ the dub's audio
def _tone_file(path: Path, rate: int, seconds: float) -> np.ndarray:
    """A stereo WAV (left 440 Hz, right 660 Hz) at `rate`; returns its samples [2, S]."""
    import av

    t = np.arange(round(rate * seconds)) / rate
    samples = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16).T.reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return samples


@pytest.mark.parametrize("rate", [44100, 48000])
def test_source_audio_keeps_rate_and_channels_and_fits_the_video(tmp_path, rate):
    from engine.media.audio import load_source_audio

    samples = _tone_file(tmp_path / "speech.wav", rate, 0.5)
    longer = load_source_audio(tmp_path / "speech.wav", seconds=0.8)  # padded with silence
    assert (longer.sample_rate, longer.channels) == (rate, 2) and longer.samples.shape == (2, round(0.8 * rate))
    assert np.abs(longer.samples[:, samples.shape[1]:]).max() == 0
    assert np.abs(longer.samples[:, : samples.shape[1]] - samples).max() < 1e-3
    shorter = load_source_audio(tmp_path / "speech.wav", seconds=0.2)  # trimmed
    assert shorter.samples.shape == (2, round(0.2 * rate))


def test_writer_muxes_stereo_48k_aac(tmp_path):
    from engine.media import VideoWriter, probe

    audio = np.stack([np.full(4800, 0.1, np.float32), np.full(4800, -0.1, np.float32)])
    with VideoWriter(tmp_path / "o.mp4", 64, 48, audio=audio, sample_rate=48000, preset="ultrafast") as w:
        for _ in range(3):
            w.write(np.zeros((48, 64, 3), np.uint8))
    info = probe(tmp_path / "o.mp4")
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 48000, 2)


@pytest.fixture(scope="module")
def clip(media, tmp_path_factory):
    """0.6 s of demo1 (540x960) and 0.6 s of 48 kHz stereo speech."""
    from engine.media import cut_clip

    root = tmp_path_factory.mktemp("clip")
    cut_clip(media / "demo1_video.mp4", root / "face.mp4", seconds=0.6, size=(540, 960))
    _tone_file(root / "speech48.wav", 48000, 0.6)
    return root / "face.mp4", root / "speech48.wav"


@pytest.mark.parametrize(("flag", "expected"), [((), (48000, 2)), (("--output-audio", "model"), (16000, 1))])
def test_engine_run_keeps_48k_stereo_speech(clip, tmp_path, flag, expected):
    """`engine run` with 48 kHz stereo speech writes 48 kHz stereo AAC; --output-audio model keeps 16 kHz mono."""
    from engine.media import probe

    video, speech = clip
    out, report = tmp_path / "out.mp4", tmp_path / "report.json"
    from engine.cli import main

    # in-process: the CLI's argument handling and writer are what is tested, not the interpreter's start
    assert main(["run", "--model", "tiny-random", "--video", str(video), "--audio", str(speech), "--output", str(out),
                 "--steps", "1", "--guidance", "1.0", "--face", "mediapipe", "--device", "cpu", "--no-progress",
                 "--report", str(report), *flag]) == 0
    info = probe(out)
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", *expected)
    assert abs(info.audio.duration_s - info.video.duration_s) < 0.03  # trimmed / padded to the video
    data = json.loads(report.read_text())
    assert (data["audio_sample_rate"], data["audio_channels"]) == expected


# ------------------------------------------------------------------ engine doctor
def test_doctor_warns_about_cuda_libraries_without_a_gpu(monkeypatch):
    from engine.cli import doctor

    monkeypatch.setattr(doctor, "nvidia_distributions", lambda: {"nvidia-cublas-cu12": 2**30, "nvidia-cudnn-cu12": 2**30})
    monkeypatch.setattr(doctor.os.path, "exists", lambda p: False)  # no /dev/nvidiactl
    warning = doctor.cuda_libraries_without_gpu("2.13.0+cu128", "12.8", False)
    assert "no GPU is visible" in warning and "CUDA build" in warning and "2 nvidia-* packages (2.0 GiB" in warning
    assert doctor.CPU_TORCH_INDEX in warning
    assert doctor.cuda_libraries_without_gpu("2.13.0+cu128", "12.8", True) is None  # a GPU: nothing to say
    monkeypatch.setattr(doctor, "nvidia_distributions", lambda: {})
    assert doctor.cuda_libraries_without_gpu("2.13.0+cpu", None, False) is None  # a CPU install stays quiet


# ------------------------------------------------------------------ ONNX Runtime memory and auto's rule
def test_ort_sessions_have_the_cpu_arena_off_and_cuda_arena_by_request():
    import onnxruntime as ort
    import torch

    from engine.backends.ort_backend import default_providers, session_options

    assert session_options(ort).enable_cpu_mem_arena is False
    assert session_options(ort, cpu_mem_arena=True).enable_cpu_mem_arena is True
    (cuda, options), cpu = default_providers(torch.device("cuda:1"))
    assert (cuda, options, cpu) == ("CUDAExecutionProvider",
                                    {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"},
                                    "CPUExecutionProvider")


def test_auto_never_picks_a_backend_needing_several_times_the_memory(tmp_path, monkeypatch):
    import torch

    from engine.backends import EngineConfig, create_runners
    from engine.backends.select import AUTO_MAX_MEMORY_FACTOR, memory_reason
    from engine.cli import main
    from engine.weights import load_models

    cpu = torch.device("cpu")
    assert memory_reason("onnxruntime", cpu, EngineConfig()) is None
    assert "auto allows at most 2x" in memory_reason("onnxruntime", cpu, EngineConfig(ort_cpu_mem_arena=True))
    assert AUTO_MAX_MEMORY_FACTOR == 2.0
    monkeypatch.setenv("LATENTSYNC_ENGINE_CACHE", str(tmp_path / "cache"))
    assert main(["export", "--model", "tiny-random", "--device", "cpu", "--networks", "audio_encoder"]) == 0
    models = load_models("tiny-random")
    assert create_runners(models, "auto").choice["audio"] == "onnxruntime"
    arena = create_runners(models, "auto", engine=EngineConfig(ort_cpu_mem_arena=True))
    assert arena.choice["audio"] == "torch"  # the arena's measured 5.33x is over the rule's 2x


# ------------------------------------------------------------------ batch summary
def test_batch_summary_reports_peak_rss():
    from engine.cluster.outcome import BatchReport
    from engine.runtime.heap import peak_rss_mib

    peak = peak_rss_mib()
    assert peak["self"] > 10
    report = BatchReport(manifest="m.csv", runner="local", workers=1, outcomes=[], wall_seconds=1.0,
                         startup_seconds=0.1, options={}, peak_rss_mib=peak)
    assert f"peak RSS {peak['self']:.0f} MiB" in report.summary()
    assert report.to_json()["peak_rss_mib"] == peak


# ------------------------------------------------------------------ eval --reference
def test_reference_of_another_clip_is_detected(media, tmp_path):
    from engine.eval.reference_match import reference_mismatch
    from engine.media import cut_clip

    one = cut_clip(media / "demo1_video.mp4", tmp_path / "a.mp4", seconds=0.4, size=(270, 480)).path
    again = cut_clip(media / "demo1_video.mp4", tmp_path / "b.mp4", seconds=0.4, size=(270, 480), crf=30).path
    other = cut_clip(media / "demo2_video.mp4", tmp_path / "c.mp4", seconds=0.4, size=(270, 480)).path
    longer = cut_clip(media / "demo1_video.mp4", tmp_path / "d.mp4", seconds=0.8, size=(270, 480)).path
    assert reference_mismatch(one, again) is None  # the same clip, encoded differently
    assert "grey levels" in reference_mismatch(one, other)
    assert "frames" in reference_mismatch(one, longer)


# ------------------------------------------------------------------ gpu_check statuses
def test_gpu_check_step_is_not_ok_when_pytest_is_missing_or_a_run_timed_out(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_check import rows_problem

    missing = [{"kind": "summary", "returncode": 1, "output_tail": "/usr/bin/python: No module named pytest"}]
    assert rows_problem(missing) == ("failed", 'pytest is not installed (pip install -e ".[dev]")')
    assert rows_problem([{"kind": "summary", "returncode": None, "output_tail": "pytest timed out after 60 s"}])[0] \
        == "timeout"
    assert rows_problem([{"kind": "throughput", "error": "timed out after 120 s"}]) == ("timeout",
                                                                                        "timed out after 120 s")
    assert rows_problem([{"kind": "summary", "returncode": 0, "output_tail": ""}, {"kind": "stream"}]) is None


# ------------------------------------------------------------------ serve --ray: a replica killed for memory
def test_a_replica_killed_for_memory_is_named_as_such():
    from engine.cluster.ray_env import actor_death_cause

    oom = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: StreamReplica\n"
                       "Worker exit detail: Task was killed due to the node running low on memory. "
                       "ray.exceptions.OutOfMemoryError")
    assert actor_death_cause(oom).startswith("killed for memory")
    assert actor_death_cause(RuntimeError("worker exit code 134")).startswith("aborted")
    assert actor_death_cause(ValueError("something else\nmore")) == "ValueError: something else"
