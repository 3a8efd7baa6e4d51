"""GPU video I/O (`--video-io`, `[gpu-video]`): selection and typed errors before any model loads, the CPU-checkable
parts of the GPU path (time resampling, RGB -> NV12, muxing an H.264 elementary stream with the audio), `auto`
giving the CPU path's bytes here, and requires_cuda tests of NVDEC decode and a whole job with NVENC."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from engine.errors import BackendUnavailableError
from engine.extras import MissingExtraError
from engine.media import gpu_video
from engine.media.gpu_video import resolve_video_io

SECONDS = 0.32  # 8 frames
SIZE = (384, 672)  # width a multiple of 16: x264 gives the same bytes on every encode (engine.media.writer)
FAST_ARGS = ["--steps", "1", "--guidance", "1", "--deepcache", "0", "--face", "mediapipe", "--device", "cpu",
             "--no-progress"]


@pytest.fixture(scope="module")
def clip(media, tmp_path_factory):
    """(video path, speech wav path): demo1 cut to SECONDS at 384x672, real PyAV media with a real face."""
    from engine.media import cut_clip, load_audio
    from engine.media.writer import write_wav

    root = tmp_path_factory.mktemp("gpu-video")
    video, wav = root / "clip.mp4", root / "speech.wav"
    cut_clip(media / "demo1_video.mp4", video, seconds=SECONDS, size=SIZE)
    write_wav(wav, load_audio(media / "demo1_audio.wav")[: int(SECONDS * 16000)])
    return video, wav


def _available(monkeypatch, *, libraries: bool, cuda: bool) -> None:
    monkeypatch.setattr(gpu_video, "missing_libraries", lambda: [] if libraries else ["torchcodec", "PyNvVideoCodec"])
    monkeypatch.setattr(gpu_video, "cuda_device_available", lambda device=None: cuda)


@pytest.mark.parametrize("libraries,cuda,auto", [(True, True, "gpu"), (True, False, "cpu"), (False, True, "cpu"),
                                                 (False, False, "cpu")])
def test_resolve_video_io(monkeypatch, libraries, cuda, auto):
    _available(monkeypatch, libraries=libraries, cuda=cuda)
    assert resolve_video_io("cpu", "cpu") == "cpu"
    assert resolve_video_io("auto", "auto") == auto
    if libraries and cuda:
        assert resolve_video_io("gpu", "cuda") == "gpu"
    elif not libraries:
        with pytest.raises(MissingExtraError, match=r"\[gpu-video\]"):
            resolve_video_io("gpu", "cuda")
    else:
        with pytest.raises(BackendUnavailableError, match="CUDA device"):
            resolve_video_io("gpu", "cuda")
    with pytest.raises(ValueError, match="video_io"):
        resolve_video_io("nvdec", None)


def test_real_availability_here_is_consistent():
    import torch

    from engine.extras import EXTRAS, status

    assert "gpu-video" in EXTRAS and "gpu-video" in status()  # `engine doctor` lists it
    both = not gpu_video.missing_libraries() and torch.cuda.is_available()
    assert resolve_video_io("auto") == ("gpu" if both else "cpu")
    assert gpu_video.cuda_device_available("cpu") is False


@pytest.mark.parametrize("libraries,error,words", [(False, "MissingExtraError", "[gpu-video]"),
                                                   (True, "BackendUnavailableError", "CUDA device")])
def test_engine_run_video_io_gpu_fails_typed_before_any_model_loads(monkeypatch, capsys, clip, tmp_path, libraries,
                                                                    error, words):
    from engine.cli import main, options

    _available(monkeypatch, libraries=libraries, cuda=False)

    def no_model(args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(options, "load_sync", no_model)
    video, wav = clip
    out = tmp_path / "out.mp4"
    code = main(["run", "--model", "tiny-random", "--video", str(video), "--audio", str(wav), "--output", str(out),
                 "--video-io", "gpu", *FAST_ARGS])
    err = capsys.readouterr().err
    assert code == 7, err
    assert error in err and words in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_gpu_reader_and_writer_name_the_extra_when_it_is_missing(clip, tmp_path):
    if not gpu_video.missing_libraries():
        pytest.skip("the [gpu-video] extra is installed here")
    with pytest.raises(MissingExtraError, match=r"\[gpu-video\]"):
        next(gpu_video.iter_gpu_video_frames(clip[0]))
    with pytest.raises(MissingExtraError, match=r"\[gpu-video\]"):
        gpu_video.GpuVideoWriter(tmp_path / "out.mp4", 64, 64)
    assert list(tmp_path.iterdir()) == []


def _pyav_frames(path):
    """(t, end, rgb) of every source frame, seconds as Fractions from the stream start, PyAV's own conversion."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = stream.start_time * stream.time_base
        for frame in container.decode(stream):
            t = frame.pts * frame.time_base - origin
            yield t, t + frame.duration * frame.time_base, frame.to_ndarray(format="rgb24")


@pytest.mark.parametrize("fps", [25, 30, Fraction(30000, 1001), 12])
def test_resample_by_time_is_the_pyav_paths_rule(clip, fps):
    from engine.media.video import iter_video_frames

    expected = list(iter_video_frames(clip[0], fps=fps))
    got = list(gpu_video.resample_by_time(_pyav_frames(clip[0]), Fraction(fps)))
    assert [k for k, _ in got] == [f.index for f in expected] and len(got) > 0
    for (_, rgb), frame in zip(got, expected):
        np.testing.assert_array_equal(rgb, frame.rgb)
    assert [k for k, _ in gpu_video.resample_by_time(_pyav_frames(clip[0]), Fraction(fps), max_frames=3)] == [0, 1, 2]


def test_rgb_to_nv12_matches_ffmpegs_conversion(clip):
    import torch

    from engine.media.video import iter_video_frames

    rgb = next(iter(iter_video_frames(clip[0]))).rgb  # [672, 384, 3]
    ours = gpu_video.rgb_to_nv12(torch.from_numpy(rgb)).numpy().astype(int)
    theirs = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="nv12").to_ndarray().astype(int)
    h = rgb.shape[0]
    assert ours.shape == theirs.shape == (h * 3 // 2, rgb.shape[1])
    assert np.abs(ours[:h] - theirs[:h]).max() <= 1  # luma: the same BT.601 limited-range matrix
    chroma = np.abs(ours[h:] - theirs[h:])
    assert chroma.mean() < 1.0 and chroma.max() <= 8  # chroma: 2x2 mean vs swscale's own subsampling filter


def test_nvenc_output_becomes_one_bitstream():
    """PyNvVideoCodec 2.x returns [{"data": ...}] packets (its samples join them so); older releases bytes."""
    packets = [{"data": b"\x00\x00\x00\x01g"}, {"data": np.frombuffer(b"\x00\x00\x01e", np.uint8)}]
    assert gpu_video._bitstream(packets) == b"\x00\x00\x00\x01g\x00\x00\x01e"
    assert gpu_video._bitstream(b"abc") == b"abc" and gpu_video._bitstream(None) == b"" == gpu_video._bitstream([])


def _h264_elementary_stream(frames, path, rate):
    """A real H.264 Annex B stream without B-frames (what NVENC is asked for), from libx264."""
    with av.open(str(path), mode="w", format="h264") as out:
        stream = out.add_stream("libx264", rate=rate, options={"x264-params": "bframes=0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_muxed_elementary_stream_keeps_the_writers_timestamps_and_audio(clip, tmp_path):
    """The second half of GpuVideoWriter on the CPU: elementary stream + audio -> mp4, against VideoWriter's file."""
    from engine.media import VideoWriter, load_audio, probe
    from engine.media.video import iter_video_frames

    frames = [f.rgb for f in iter_video_frames(clip[0])]
    audio = load_audio(clip[1])
    stream = tmp_path / "video.h264"
    _h264_elementary_stream(frames, stream, 25)
    muxed = tmp_path / "muxed.mp4"
    assert gpu_video.mux_elementary_stream(stream, muxed, rate=Fraction(25), audio=audio[None, :]) == len(frames)
    reference = tmp_path / "reference.mp4"
    with VideoWriter(reference, SIZE[0], SIZE[1], audio=audio, preset="ultrafast") as writer:
        for rgb in frames:
            writer.write(rgb)
    got, want = probe(muxed), probe(reference)
    assert (got.video.width, got.video.height, got.video.fps) == (want.video.width, want.video.height, want.video.fps)
    assert got.audio.sample_rate == want.audio.sample_rate and got.audio.channels == want.audio.channels
    assert abs(got.video.duration_s - want.video.duration_s) < 1e-6
    assert [f.time_s for f in iter_video_frames(muxed)] == [f.time_s for f in iter_video_frames(reference)]
    np.testing.assert_array_equal(load_audio(muxed), load_audio(reference))
    with av.open(str(muxed)) as container:
        pts = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert sorted(pts) == pts and len(pts) == len(frames)


def test_auto_writes_the_cpu_paths_bytes_here(clip, tmp_path):
    """Without [gpu-video] or a GPU, `video_io="auto"` is the PyAV path: byte-identical output to "cpu" (the SDK
    call that `engine run` makes, on tiny-random with a narrow VAE to keep it to seconds)."""
    import torch

    from stream_helpers import micro_sync

    if not gpu_video.missing_libraries() and torch.cuda.is_available():
        pytest.skip("auto picks the GPU path on this machine")
    video, wav = clip
    outs = {}
    with micro_sync() as sync:
        for choice in ("cpu", "auto"):
            outs[choice] = tmp_path / f"{choice}.mp4"
            result = sync(video, wav, outs[choice], steps=1, guidance=1.0, deepcache=0, face="mediapipe",
                          video_io=choice)
            assert result.video_io == "cpu" and result.num_frames == 8
    assert outs["cpu"].read_bytes() == outs["auto"].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.mp4", "cpu.mp4"]


# ----------------------------------------------------------------- on a GPU
@pytest.mark.requires_cuda
def test_nvdec_frames_match_pyav(clip):
    if gpu_video.missing_libraries():
        pytest.skip("the [gpu-video] extra is not installed")
    from engine.media.video import iter_video_frames

    for fps in (25, 30):
        cpu = list(iter_video_frames(clip[0], fps=fps))
        gpu = list(gpu_video.iter_gpu_video_frames(clip[0], fps=fps))
        assert [(f.index, f.time_s) for f in gpu] == [(f.index, f.time_s) for f in cpu]
        for a, b in zip(gpu, cpu):
            assert a.rgb.shape == b.rgb.shape and a.rgb.dtype == np.uint8
            diff = np.abs(a.rgb.astype(int) - b.rgb.astype(int))
            assert diff.mean() < 3.0, (a.index, diff.mean())  # GPU vs swscale colour conversion


@pytest.mark.requires_cuda
def test_a_whole_job_with_video_io_gpu_matches_the_cpu_paths_contract(clip, tmp_path):
    if gpu_video.missing_libraries():
        pytest.skip("the [gpu-video] extra is not installed")
    from engine.cli import main
    from engine.media import load_audio, probe
    from engine.media.video import iter_video_frames

    video, wav = clip
    args = [a if a != "cpu" else "cuda" for a in FAST_ARGS]
    outs = {}
    for choice in ("cpu", "gpu"):
        outs[choice] = tmp_path / f"{choice}.mp4"
        assert main(["run", "--model", "tiny-random", "--video", str(video), "--audio", str(wav), "--output",
                     str(outs[choice]), "--video-io", choice, *args]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu.mp4", "gpu.mp4"]  # no .partial left
    cpu, gpu = probe(outs["cpu"]), probe(outs["gpu"])
    assert (gpu.video.width, gpu.video.height, gpu.video.fps) == (cpu.video.width, cpu.video.height, cpu.video.fps)
    assert abs(gpu.video.duration_s - cpu.video.duration_s) < 1e-6
    assert [f.time_s for f in iter_video_frames(outs["gpu"])] == [f.time_s for f in iter_video_frames(outs["cpu"])]
    np.testing.assert_array_equal(load_audio(outs["gpu"]), load_audio(outs["cpu"]))
