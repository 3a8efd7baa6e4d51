"""Issue 11: the user's files are never destroyed, bad files fail in seconds before any model loads, and the
small defects (umask, WAV sizes, empty model folder, 1x1 video, non-finite weights)."""

from __future__ import annotations

import json
import os
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main as cli_main
from engine.errors import CheckpointError, InvalidInputError, MediaDecodeError
from engine.media import load_audio, probe
from test_media import write_audio_file
from test_media_reliability import write_clip, write_wav_header

FACE_SIZE = (96, 128)  # w, h: large enough for the smallest accepted face (50x80)
PREFLIGHT_S = 2.0  # every refusal below happens well within this, before any model loads


class ModelsLoaded(AssertionError):
    pass


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to load a model fails the test: the refusals must come first."""

    def refuse(*args, **kwargs):
        raise ModelsLoaded("a model was loaded before the input was refused")

    monkeypatch.setattr("engine.pipeline.sdk.LipSync.from_pretrained", refuse)
    monkeypatch.setattr("engine.weights.load_models", refuse)
    monkeypatch.setattr("engine.weights.loader.load_models", refuse)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=25, size=FACE_SIZE)


@pytest.fixture
def job(tmp_path, clip) -> dict[str, Path]:
    video = tmp_path / "video.mp4"
    video.write_bytes(clip.read_bytes())
    audio = tmp_path / "speech.wav"
    write_wav_header(audio, 16000, (1000 * np.sin(np.arange(16000) / 10)).astype(np.int16))
    return {"video": video, "audio": audio}


def run_cli(*argv: str) -> tuple[int, float]:
    start = time.perf_counter()
    code = cli_main([str(a) for a in argv])
    return code, time.perf_counter() - start


def run_job(video, audio, output, *extra) -> tuple[int, float]:
    return run_cli("run", "--model", "tiny-random", "--video", video, "--audio", audio, "--output", output,
                   "--no-progress", *extra)


# ----------------------------------------------------------------------------- 11.1 data loss
@pytest.mark.parametrize("how", ["same path", "relative path", "symlink", "hard link", "audio"])
def test_run_refuses_to_overwrite_an_input(job, tmp_path, monkeypatch, no_models, capsys, how):
    video, audio = job["video"], job["audio"]
    before = {p: p.read_bytes() for p in (video, audio)}
    output = {"same path": video, "audio": audio.with_suffix(".mp4")}.get(how)
    if how == "relative path":
        monkeypatch.chdir(tmp_path)
        output = Path("sub") / ".." / video.name
        (tmp_path / "sub").mkdir()
    elif how == "symlink":
        output = tmp_path / "link.mp4"
        output.symlink_to(video)
    elif how == "hard link":
        output = tmp_path / "hard.mp4"
        os.link(video, output)
    elif how == "audio":  # an audio input with an mp4 name: a video's own track given as --audio
        audio = video.with_name("track.mp4")
        os.link(video, audio)
        output = audio
    code, seconds = run_job(video, audio, output)
    assert code == 2 and seconds < PREFLIGHT_S
    assert "not an input" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_avatar_prepare_refuses_its_input(job, no_models, capsys):
    video = job["video"]
    before = video.read_bytes()
    for out in (video, video.parent):  # the file itself, or the folder holding it
        code, _ = run_cli("avatar", "prepare", "--model", "tiny-random", "--video", video, "--out", out)
        assert code == 2
        assert "input" in capsys.readouterr().err
    assert video.read_bytes() == before


def test_eval_outputs_never_replace_inputs(job, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("engine.eval.inputs.load_networks",
                        lambda **k: (_ for _ in ()).throw(ModelsLoaded("networks loaded")))
    video = job["video"]
    before = video.read_bytes()
    code, _ = run_cli("eval", "--video", video, "--box", "0,0,50,80", "--json", video)
    assert code == 2 and "not an input" in capsys.readouterr().err
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    table = sweep_dir / "sweep.md"
    os.link(video, table)  # the input is where the sweep writes its table
    code, _ = run_cli("eval", "--sweep", "--video", table, "--audio", job["audio"], "--out", sweep_dir,
                      "--model", "tiny-random", "--settings", "steps=1")
    assert code == 2 and "not an input" in capsys.readouterr().err
    assert video.read_bytes() == before


def test_convert_refuses_to_overwrite_its_source(tmp_path, capsys):
    from engine.weights.tiny import write_tiny_random

    source = write_tiny_random(tmp_path / "model")
    files = sorted(p.relative_to(source) for p in source.rglob("*"))
    for out in (source, tmp_path):  # the source itself, or a folder holding it (--overwrite would delete it)
        code, _ = run_cli("convert", "--model", source, "--out", out, "--overwrite")
        assert code == 2 and "input" in capsys.readouterr().err
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == files


def test_same_file_cases(tmp_path):
    from engine.media.paths import same_file

    a = tmp_path / "a.mp4"
    a.write_bytes(b"x")
    (tmp_path / "d").mkdir()
    assert same_file(a, tmp_path / "d" / ".." / "a.mp4")
    os.link(a, tmp_path / "b.mp4")
    assert same_file(a, tmp_path / "b.mp4")
    assert not same_file(a, tmp_path / "new.mp4")


# ----------------------------------------------------------------------------- 11.2 output path at start
@pytest.mark.parametrize("case", ["missing dir", "a directory", "read-only dir", "extension", "no extension"])
def test_output_path_checked_before_models(job, tmp_path, no_models, capsys, case):
    target = {
        "missing dir": tmp_path / "no such dir" / "out.mp4",
        "a directory": tmp_path,
        "read-only dir": Path("/sys/out.mp4") if os.geteuid() == 0 else tmp_path / "ro" / "out.mp4",
        "extension": tmp_path / "out.avi",
        "no extension": tmp_path / "out",
    }[case]
    if case == "read-only dir" and os.geteuid() != 0:
        target.parent.mkdir()
        target.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    code, seconds = run_job(job["video"], job["audio"], target)
    err = capsys.readouterr().err
    assert code == 2 and seconds < PREFLIGHT_S, err
    expected = {"missing dir": "existing output directory", "a directory": "a file path",
                "read-only dir": "writable directory", "extension": ".mp4", "no extension": ".mp4"}[case]
    assert expected in err and "encoder settings" not in err


def test_report_path_checked_too(job, tmp_path, no_models, capsys):
    code, _ = run_job(job["video"], job["audio"], tmp_path / "out.mp4", "--report", job["video"])
    assert code == 2 and "--report" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 11.5 corrupt video before models
def _nal_damaged(data: bytes) -> bytes:
    """Overwrite the length prefix of a NAL unit in the middle of the file (what random bytes mid-file do)."""
    out = bytearray(data)
    mdat = data.find(b"mdat") + 4
    at = mdat + (len(data) - mdat) // 2
    while True:  # find a plausible 4-byte NAL length ahead: the next sample's start is not known, so scan
        n = struct.unpack(">I", out[at:at + 4])[0]
        if 0 < n < len(data) - at and out[at + 4] in (0x41, 0x01, 0x65, 0x06):  # slice / IDR / SEI NAL headers
            break
        at += 1
    out[at:at + 4] = b"\xff\xff\xff\x7f"
    return bytes(out)


@pytest.mark.parametrize("damage", ["cut at 50 %", "cut at 90 %", "NAL length smashed"])
def test_corrupt_video_found_by_the_demux_pass(job, tmp_path, no_models, capsys, damage):
    data = job["video"].read_bytes()  # faststart: moov first, so cuts keep the sample tables
    broken = tmp_path / "broken.mp4"
    broken.write_bytes({"cut at 50 %": data[: len(data) // 2], "cut at 90 %": data[: len(data) * 9 // 10],
                        "NAL length smashed": _nal_damaged(data)}[damage])
    probe(broken)  # the metadata and the first frame look fine: only the packets tell
    code, seconds = run_job(broken, job["audio"], tmp_path / "out.mp4")
    err = capsys.readouterr().err
    assert code == 3 and seconds < PREFLIGHT_S, err
    assert "MediaDecodeError" in err and "stream #0 (video, h264)" in err
    assert not (tmp_path / "out.mp4").exists()


def test_preflight_of_the_demo_clip_is_fast(media, tmp_path):
    from engine.media.preflight import preflight

    checked = preflight(media / "demo1_video.mp4", media / "demo1_audio.wav", tmp_path / "out.mp4")
    checked = preflight(media / "demo1_video.mp4", media / "demo1_audio.wav", tmp_path / "out.mp4")  # warm
    assert checked.video_packets == 250 and checked.samples.dtype == np.float32
    assert checked.samples.size == round(probe(media / "demo1_audio.wav").audio.duration_s * 16000)
    assert checked.seconds < 1.0  # ~0.06 s warm on the 2-core box: demux pass + full WAV decode


# ----------------------------------------------------------------------------- 11.6 / 11.7 audio before models
def _mp3(path: Path, seconds: float = 2.0) -> bytes:
    t = np.arange(int(44100 * seconds)) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_audio_file(path, np.stack([tone, tone]), 44100, "mp3", "stereo", "fltp")
    return path.read_bytes()


def _audio_case(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "bad.wav"
    if case in ("NaN", "Inf"):
        x = np.zeros((1, 16000), np.float32)
        x[0, 9000] = np.nan if case == "NaN" else np.inf
        write_audio_file(path, x, 16000, "pcm_f32le", "mono", "flt")
    elif case == "WAV shorter than its header":
        write_wav_header(path, 16000, np.arange(32000) % 1000)
        path.write_bytes(path.read_bytes()[:40000])
    elif case == "zero-length":
        write_wav_header(path, 16000, np.zeros(0, np.int16))
    else:
        path = tmp_path / "bad.mp3"
        data = _mp3(tmp_path / "full.mp3")
        if case == "truncated MP3":
            path.write_bytes(data[: len(data) // 2])
        else:  # damaged MP3: a block of garbage over the middle frames
            mid = len(data) // 2
            path.write_bytes(data[:mid] + np.random.default_rng(3).bytes(2000) + data[mid + 2000:])
    return path


@pytest.mark.parametrize("case,code", [("NaN", 2), ("Inf", 2), ("zero-length", 2), ("truncated MP3", 3),
                                       ("damaged MP3", 3), ("WAV shorter than its header", 3)])
def test_audio_errors_before_models(job, tmp_path, no_models, capsys, case, code):
    bad = _audio_case(tmp_path, case)
    got, seconds = run_job(job["video"], bad, tmp_path / "out.mp4")
    err = capsys.readouterr().err
    assert got == code and seconds < PREFLIGHT_S, err
    assert ("InvalidInputError" if code == 2 else "MediaDecodeError") in err
    assert "Traceback" not in err


def test_wav_longer_than_its_header_is_read_in_full(tmp_path, caplog):
    path = tmp_path / "long.wav"
    write_wav_header(path, 16000, np.arange(16000, dtype=np.int16))
    path.write_bytes(path.read_bytes() + np.arange(8000, dtype="<i2").tobytes())  # a writer died before the header
    assert load_audio(path).size == 24000
    assert "reading all of them" in caplog.text
    caplog.clear()
    tagged = tmp_path / "tagged.wav"  # bytes after the samples that are proper chunks (LIST tags) are not audio
    write_wav_header(tagged, 16000, np.arange(16000, dtype=np.int16))
    info = b"INFOISFT" + struct.pack("<I", 6) + b"tests\x00"
    tagged.write_bytes(tagged.read_bytes() + b"LIST" + struct.pack("<I", len(info)) + info)
    assert load_audio(tagged).size == 16000 and "reading all" not in caplog.text


# ----------------------------------------------------------------------------- 11.11 small ones
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (48, 64)])
def test_tiny_frames_rejected_from_metadata(tmp_path, job, no_models, capsys, size):
    tiny = write_clip(tmp_path / "tiny.mp4", frames=3, size=size)
    if size[0] < 16:
        with pytest.raises(InvalidInputError, match="at least 16x16"):
            probe(tiny)
    code, seconds = run_job(tiny, job["audio"], tmp_path / "out.mp4")
    err = capsys.readouterr().err
    assert code == 2 and seconds < PREFLIGHT_S and "px" in err


def test_minimum_frame_is_the_detectors_minimum_face():
    from engine.face.detection.base import FaceThresholds
    from engine.media.preflight import min_frame_size

    assert min_frame_size() == (FaceThresholds().min_width, FaceThresholds().min_height)


def test_convert_honours_the_umask(tmp_path):
    from engine.weights.convert import convert_model
    from engine.weights.tiny import write_tiny_random

    source = write_tiny_random(tmp_path / "model")
    old = os.umask(0o027)
    try:
        out = convert_model(source, tmp_path / "converted")
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes["unet.safetensors"] == 0o640 and modes["engine.json"] == 0o640
    assert modes["vae"] == 0o750
    assert all(m in (0o640, 0o750) for m in modes.values()), modes


def test_empty_model_directory_names_the_unet(tmp_path):
    from engine.weights import resolve_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="U-Net checkpoint"):
        resolve_model(tmp_path / "empty", offline=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_refused_at_load(tmp_path, bad):
    from engine.weights import load_models
    from engine.weights.tiny import write_tiny_random

    source = write_tiny_random(tmp_path / "model")
    meta = json.loads((source / "engine.json").read_text())
    meta.pop("sha256")  # we change the files on purpose
    (source / "engine.json").write_text(json.dumps(meta))
    ckpt = torch.load(source / "latentsync_unet.pt", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
    ckpt["state_dict"][key].view(-1)[3] = bad
    torch.save(ckpt, source / "latentsync_unet.pt")
    with pytest.raises(CheckpointError, match=rf"non-finite.*'{key}'"):
        load_models(source)


def test_non_finite_vae_and_whisper_weights_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.weights import load_vae
    from engine.weights.loader import load_whisper
    from engine.weights.tiny import write_tiny_random

    source = write_tiny_random(tmp_path / "model")
    vae_file = source / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(vae_file)
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, vae_file)
    with pytest.raises(CheckpointError, match=rf"{key}.*NaN"):
        load_vae(source / "vae")
    whisper = torch.load(source / "whisper" / "tiny.pt", weights_only=True)
    wkey = next(iter(whisper["model_state_dict"]))
    whisper["model_state_dict"][wkey] = whisper["model_state_dict"][wkey] * float("inf")
    torch.save(whisper, source / "whisper" / "tiny.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_whisper(source / "whisper" / "tiny.pt")


def test_check_output_removes_nothing_it_should_not(tmp_path):
    from engine.media.paths import check_output

    keep = tmp_path / ".notes.mp4.partial"  # a .partial name we did not make: left alone
    keep.write_bytes(b"x")
    assert check_output(tmp_path / "out.mp4") == tmp_path / "out.mp4"
    assert keep.exists()
    with pytest.raises(InvalidInputError, match="expected a file path"):
        check_output(123)  # type: ignore[arg-type]


def test_corruption_only_decoding_finds_still_fails_typed(tmp_path):
    """Damage inside coded pictures passes the demux pass; decoding raises MediaDecodeError naming the stream."""
    from engine.media import iter_video_frames

    data = bytearray(write_clip(tmp_path / "full.mp4", frames=25, size=FACE_SIZE, audio=False).read_bytes())
    mdat = data.find(b"mdat")
    rng = np.random.default_rng(5)
    for pos in rng.integers(mdat + len(data) // 3, len(data), 300):
        data[pos] ^= 0x55
    path = tmp_path / "flipped.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaDecodeError, match=r"stream #0 \(video, h264\)"):
        for _ in iter_video_frames(path):
            pass
