"""engine.eval: SyncNet / StableSyncNet / MFCC / mel parity with the official evaluator, LSE arithmetic,
crops, fidelity metrics, safe checkpoint loading and the `engine eval` command."""

from __future__ import annotations

import itertools
import json
import os
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, InvalidInputError, NoFaceError
from engine.eval import crops as crops_mod
from engine.eval.fidelity import FidelityAccumulator, psnr, ssim
from engine.eval.lse import num_windows, pairwise_dists, score_offsets
from engine.eval.mfcc import mfcc, syncnet_cc
from engine.eval.stable_syncnet import (
    StableSyncNet,
    load_stable_syncnet,
    official_stable_syncnet_config,
    small_stable_syncnet_config,
    stable_sync_score,
    visual_input,
)
from engine.eval.syncnet import SyncNetS, lip_windows, load_syncnet, mfcc_windows
from engine.eval.syncnet_mel import mel_window, melspectrogram, preemphasis
from engine.eval.weights import load_int8_safetensors, load_state_dict_file, load_strict, load_torch_state_dict

FIXED_BOX = (510, 610, 690, 830)  # golden lse_crops_demo1 box


@pytest.fixture(scope="module")
def ev(golden):
    return golden / "eval"


@pytest.fixture(scope="module")
def syncnet(ev):
    return load_syncnet(ev / "syncnet_s_weights.safetensors")


@pytest.fixture(scope="module")
def crops(ev):
    return load_file(ev / "lse_crops_demo1.safetensors")["crops_bgr_u8"].numpy()


# ---------------------------------------------------------------- MFCC / SyncNet S / LSE


def test_mfcc_matches_python_speech_features(ev):
    g = load_file(ev / "syncnet_mfcc_demo1.safetensors")
    audio = g["audio_int16"].numpy()
    assert audio.dtype == np.int16
    np.testing.assert_allclose(mfcc(audio).T, g["mfcc_full_f64"].numpy(), rtol=0, atol=1e-3)
    cc = syncnet_cc(audio)
    assert cc.shape == (1, 1, 13, 959) and cc.dtype == torch.float32
    torch.testing.assert_close(cc, g["cc_full_f32"], rtol=0, atol=1e-3)


def test_syncnet_s_layout_and_parity(ev, syncnet, crops):
    shapes = json.loads((ev / "syncnet_s_weights.json").read_text())["shapes"]
    assert {k: list(v.shape) for k, v in SyncNetS().state_dict().items()} == {k: v[0] for k, v in shapes.items()}
    g = load_file(ev / "syncnet_s_case1.safetensors")
    cc = load_file(ev / "syncnet_mfcc_demo1.safetensors")["cc_full_f32"]
    torch.testing.assert_close(mfcc_windows(cc, [0, 100]), g["aud_input"], rtol=0, atol=0)
    with torch.no_grad():
        lip = syncnet.forward_lip(lip_windows(crops, [0, 17]))
        aud = syncnet.forward_aud(g["aud_input"])
    torch.testing.assert_close(lip, g["lip_output"], rtol=0, atol=2e-4)
    torch.testing.assert_close(aud, g["aud_output"], rtol=0, atol=2e-4)


@pytest.mark.parametrize("case", ["lse_case1_sync", "lse_case2_audio_shift3"])
def test_lse_arithmetic_from_stored_embeddings(ev, case):
    g = load_file(ev / f"{case}.safetensors")
    lip = load_file(ev / "lse_case1_sync.safetensors")["lip_embeds"]  # identical for both cases
    torch.testing.assert_close(pairwise_dists(lip, g["aud_embeds"]), g["dists"], rtol=0, atol=1e-4)
    result = score_offsets(lip, g["aud_embeds"])
    np.testing.assert_allclose(result.mean_dists, g["mean_dists"].numpy(), rtol=0, atol=1e-4)
    assert result.av_offset == int(g["av_offset"])
    assert result.n_windows == 35
    assert result.lse_d == pytest.approx(float(g["min_dist"]), abs=1e-4)
    assert result.lse_c == pytest.approx(float(g["confidence"]), abs=1e-4)


@pytest.mark.parametrize("case", ["lse_case1_sync", "lse_case2_audio_shift3"])
def test_lse_audio_tower_and_scoring(ev, syncnet, case):
    """Audio windows through the network -> the stored embeddings and scores (lip side: the SDK test below)."""
    g = load_file(ev / f"{case}.safetensors")
    cc = syncnet_cc(g["audio_int16"].numpy())
    torch.testing.assert_close(cc, g["mfcc_cc_f32"], rtol=0, atol=1e-3)
    with torch.no_grad():
        aud = syncnet.forward_aud(mfcc_windows(cc, range(num_windows(40, len(g["audio_int16"])))))
    torch.testing.assert_close(aud, g["aud_embeds"], rtol=0, atol=2e-4)
    result = score_offsets(load_file(ev / "lse_case1_sync.safetensors")["lip_embeds"], aud)
    np.testing.assert_allclose(result.mean_dists, g["mean_dists"].numpy(), rtol=0, atol=1e-4)
    assert result.av_offset == int(g["av_offset"])
    assert result.min_dist == pytest.approx(float(g["min_dist"]), abs=1e-4)
    assert result.confidence == pytest.approx(float(g["confidence"]), abs=1e-4)


def test_evaluate_clip_reproduces_golden_lse_from_the_media_files(ev, media, syncnet):
    """SDK path end to end: decode demo1, box track on frames 0..39, audio segment [0, 25600) -> case 1."""
    from engine.eval.report import EvalNetworks, evaluate_clip

    boxes = [FIXED_BOX] * 40  # frames 40.. have no box: the track is [0, 40), its audio samples [0, 25600)
    report = evaluate_clip(media / "demo1_video.mp4", media / "demo1_audio.wav", boxes, EvalNetworks(syncnet))
    g = load_file(ev / "lse_case1_sync.safetensors")
    assert report.audio_samples == 153600 and report.face_tracks == [(0, 40)]
    assert report.stable is None and report.fidelity is None
    (track,) = report.lse["tracks"]
    assert (track["start"], track["stop"]) == (0, 40)
    np.testing.assert_allclose(track["mean_dists"], g["mean_dists"].numpy(), rtol=0, atol=1e-4)
    assert report.lse["av_offset"] == int(g["av_offset"]) and track["n_windows"] == 35
    assert report.lse["lse_d"] == pytest.approx(float(g["min_dist"]), abs=1e-4)
    assert report.lse["lse_c"] == pytest.approx(float(g["confidence"]), abs=1e-4)


def test_lse_offset_search_finds_a_planted_shift():
    torch.manual_seed(0)
    aud = torch.randn(40, 16)
    lip = torch.roll(aud, shifts=-3, dims=0)  # lip[i] = aud[i+3]
    result = score_offsets(lip[:30], aud[:30], vshift=5)
    assert result.av_offset == -3 and result.mean_dists.index(min(result.mean_dists)) == 8


def test_lse_too_short_is_invalid_input():
    with pytest.raises(InvalidInputError, match="6 frames"):
        num_windows(5, 100_000)
    with pytest.raises(InvalidInputError, match="samples"):
        num_windows(100, 640 * 5 + 639)
    assert num_windows(6, 640 * 6) == 1


# ---------------------------------------------------------------- crops


def test_crops_match_official_geometry(ev, media, crops):
    from engine.eval.video import iter_rgb_frames

    frames = [f[:, :, ::-1] for f in itertools.islice(iter_rgb_frames(media / "demo1_video.mp4"), 40)]
    tracks = crops_mod.split_tracks([FIXED_BOX] * 40)
    assert [(t.start, t.stop) for t in tracks] == [(0, 40)]
    (ours,) = crops_mod.crop_frames(frames, tracks)
    np.testing.assert_array_equal(ours, crops)


def test_crop_matches_full_padding_near_the_border():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    size, cx, cy = 30.0, 10.5, 80.25  # box hangs over the left and bottom edges
    pad = int(size * 1.8)
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(110, 110))
    my, mx = cy + pad, cx + pad
    ref = padded[int(my - size) : int(my + size * 1.8), int(mx - size * 1.4) : int(mx + size * 1.4)]
    import cv2

    np.testing.assert_array_equal(crops_mod.crop_face(frame, size, cx, cy), cv2.resize(ref, (224, 224)))


def test_median_filter_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(2).normal(size=30) * 10 + 100
    np.testing.assert_allclose(crops_mod.medfilt_zero(x, 13), signal.medfilt(x, 13))


def test_tracks_bridge_short_gaps_and_need_a_face():
    boxes = [(0, 0, 10, 10)] * 10 + [None] * 3 + [(2, 0, 12, 10)] * 10 + [None] * 40 + [(0, 0, 10, 10)] * 3
    tracks = crops_mod.split_tracks(boxes, max_gap=5, min_track=6)
    assert [(t.start, t.stop) for t in tracks] == [(0, 23)]  # the 3-frame tail is too short
    with pytest.raises(NoFaceError):
        crops_mod.split_tracks([None] * 30)
    with pytest.raises(NoFaceError, match="at least 6"):
        crops_mod.split_tracks([(0, 0, 10, 10)] * 4 + [None] * 30)


# ---------------------------------------------------------------- StableSyncNet


def test_stable_syncnet_mel_matches_official(ev):
    g = load_file(ev / "stable_syncnet_inputs_demo1.safetensors")
    mel = melspectrogram(g["wav_f32"].numpy())
    assert mel.shape == (80, 769)
    np.testing.assert_allclose(mel, g["mel_full"].numpy(), rtol=0, atol=1e-4)
    for start in (0, 16, 100):
        np.testing.assert_allclose(mel_window(mel, start), g[f"mel_win_start{start}"].numpy(), rtol=0, atol=1e-4)


def test_preemphasis_matches_scipy_lfilter():
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(3).normal(size=1000).astype(np.float32)
    np.testing.assert_allclose(preemphasis(x), signal.lfilter([1, -0.97], [1], x), rtol=0, atol=1e-12)


def test_stable_syncnet_small_parity(ev):
    weights = ev / "stable_syncnet_small_case1_weights.safetensors"
    net = load_stable_syncnet(weights)
    assert net.config == small_stable_syncnet_config()
    g = load_file(ev / "stable_syncnet_small_case1.safetensors")
    faces = load_file(ev / "stable_syncnet_inputs_demo1.safetensors")["faces256_u8"]
    four = torch.stack([faces[0], faces[1], faces[0].flip(1), faces[1].flip(1)])  # flip the width axis
    visual = visual_input(four[g["visual_frame_index"]])
    assert visual.shape == (2, 48, 128, 256)
    assert float(visual.double().sum()) == pytest.approx(float(g["visual_input_sum_f64"]), abs=1e-3)
    assert float(visual.double().abs().sum()) == pytest.approx(float(g["visual_input_abs_sum_f64"]), abs=1e-3)
    torch.testing.assert_close(visual[0, 0:6, 0], g["visual_input_b0_ch0to5_row0"], rtol=0, atol=1e-6)
    with torch.no_grad():
        vision, audio = net(visual, g["audio_input"])
    torch.testing.assert_close(vision, g["vision_embeds"], rtol=0, atol=1e-4)
    torch.testing.assert_close(audio, g["audio_embeds"], rtol=0, atol=1e-4)
    torch.testing.assert_close(F.cosine_similarity(vision, audio), g["cos_sim"], rtol=0, atol=1e-4)


def test_official_stable_syncnet_layout_matches_manifest(golden):
    manifest = json.loads((golden / "manifest_syncnet_16_pixel_attn.json").read_text())
    with torch.device("meta"):
        net = StableSyncNet(official_stable_syncnet_config())
    state = net.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sum(v.numel() for v in state.values()) == manifest["num_parameters"]


def test_stable_score_windows_and_short_clip():
    net = load_stable_syncnet(random_seed=0)
    faces = np.random.default_rng(4).integers(0, 256, (26, 256, 256, 3), dtype=np.uint8)
    mel = melspectrogram(np.random.default_rng(5).normal(size=26 * 640).astype(np.float32) * 0.1)
    result = stable_sync_score(net, faces, mel, stride=5)
    assert result.window_starts == (0, 5, 10)  # the 4th would need frames 15..30
    probs = np.asarray(result.window_probs)
    assert np.all(np.abs(probs) <= 1 + 1e-6)
    assert result.mean_prob == pytest.approx(probs.mean()) and result.frac_in_sync == float((probs > 0.5).mean())
    with pytest.raises(InvalidInputError, match="16 frames"):
        stable_sync_score(net, faces[:15], mel)


# ---------------------------------------------------------------- checkpoints


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused(tmp_path, zip_format):
    marker = str(tmp_path / "PWNED")
    path = tmp_path / "evil.model"
    torch.save({"netfclip.3.bias": torch.zeros(3), "x": _Payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    with pytest.raises(CheckpointError, match="non-tensor|nn.Module"):
        load_torch_state_dict(path)
    assert not os.path.exists(marker)
    raw = tmp_path / "raw.pkl"  # a bare pickle, not even torch's format
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_torch_state_dict(raw)
    assert not os.path.exists(marker)


def test_torchscript_archive_is_refused(tmp_path):
    from engine.eval.module_pickle import load_module_pickle

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_module_pickle(path)
    with pytest.raises(CheckpointError):
        load_torch_state_dict(path)


def test_legacy_format_state_dict_loads_into_syncnet(tmp_path, syncnet):
    """syncnet_v2.model predates the zip format: a legacy-format state dict must load weights-only."""
    path = tmp_path / "syncnet_v2.model"
    torch.save(syncnet.state_dict(), path, _use_new_zipfile_serialization=False)
    net = load_syncnet(path)
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_aud(x), syncnet.forward_aud(x), rtol=0, atol=0)
    old = tmp_path / "pre_0_4_1.model"  # no BatchNorm num_batches_tracked counters yet
    torch.save({k: v for k, v in syncnet.state_dict().items() if "num_batches" not in k}, old)
    assert load_syncnet(old).netcnnaud[1].running_var.equal(syncnet.netcnnaud[1].running_var)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": syncnet.state_dict(), "global_step": 3}, wrapped)
    assert set(load_torch_state_dict(wrapped)) == set(syncnet.state_dict())


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_whole_module_loads_without_running_code(tmp_path, syncnet, zip_format):
    """torch.save(model) files name model classes; they load through inert stubs, payloads never run."""
    marker = str(tmp_path / "PWNED")
    module = SyncNetS()
    module.load_state_dict(syncnet.state_dict())
    module.extra = torch.nn.Module()
    module.extra.hook = _Payload(marker)  # an attribute that would run os.mkdir if unpickled for real
    path = tmp_path / "whole.model"
    torch.save(module, path, _use_new_zipfile_serialization=zip_format)
    state = load_torch_state_dict(path)
    assert not os.path.exists(marker)
    net = load_syncnet(path)
    for key, value in syncnet.state_dict().items():
        assert torch.equal(state[key], value), key
    x = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_aud(x), syncnet.forward_aud(x), rtol=0, atol=0)


def test_checkpoint_mismatches_are_typed(tmp_path, syncnet):
    state = dict(syncnet.state_dict())
    bad_shape = dict(state, **{"netfclip.3.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match=r"netfclip\.3\.bias.*1024.*7"):
        load_strict(SyncNetS(), bad_shape, source="t")
    missing = {k: v for k, v in state.items() if k != "netcnnaud.0.weight"}
    with pytest.raises(CheckpointError, match="missing"):
        load_strict(SyncNetS(), missing, source="t")
    pointer = tmp_path / "w.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(CheckpointError, match="git-lfs"):
        load_state_dict_file(pointer)
    unscaled = tmp_path / "q.safetensors"
    save_file({"w": torch.ones(2, 2, dtype=torch.int8)}, str(unscaled))
    with pytest.raises(CheckpointError, match="scale exponent"):
        load_int8_safetensors(unscaled)
    with pytest.raises(CheckpointError, match="found nothing"):
        load_syncnet(tmp_path / "absent.model")


def test_fetch_checkpoint_checks_and_records_the_hash(tmp_path, monkeypatch):
    from engine.eval import weights

    blob = tmp_path / "hub" / "syncnet_v2.model"
    blob.parent.mkdir()
    blob.write_bytes(b"weights v1")
    monkeypatch.setattr("engine.weights.files.hub_file", lambda *a, **k: blob)
    spec = weights.CheckpointSpec("t", "org/repo", "syncnet_v2.model")
    assert weights.fetch_checkpoint(spec, offline=True) == blob  # first use: hash recorded beside the file
    assert (tmp_path / "hub" / "syncnet_v2.model.sha256").read_text().strip() == weights.sha256_file(blob)
    blob.write_bytes(b"weights v2")  # the cached file changes afterwards
    with pytest.raises(CheckpointError, match="sha256"):
        weights.fetch_checkpoint(spec, offline=True)
    pinned = weights.CheckpointSpec("t", "org/repo", "syncnet_v2.model", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="0000"):
        weights.fetch_checkpoint(pinned, offline=True)


def test_int8_scales_are_exact(tmp_path):
    q = torch.tensor([[-128, -1], [0, 127]], dtype=torch.int8)
    path = tmp_path / "s.safetensors"
    save_file({"w": q, "b": torch.tensor([0.5])}, str(path), metadata={"int8_scale_exp": json.dumps({"w": -3})})
    state = load_int8_safetensors(path)
    torch.testing.assert_close(state["w"], torch.tensor([[-16.0, -0.125], [0.0, 15.875]]), rtol=0, atol=0)


# ---------------------------------------------------------------- fidelity


def _naive_ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Direct sliding-window SSIM (Gaussian 11x11, sigma 1.5) over valid windows only."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
            cov = (w * a * b).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_against_direct_formulas():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 200, (24, 30, 3), dtype=np.uint8)
    assert psnr(a, a + np.uint8(5)) == pytest.approx(10 * np.log10(255**2 / 25))
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    expected = np.mean([_naive_ssim_channel(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)])
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InvalidInputError):
        psnr(a, a[:-1])


def test_fidelity_accumulator_mouth_and_flicker():
    frames = [np.full((64, 64, 3), v, np.uint8) for v in (10, 30, 30)]
    reference = [np.full((64, 64, 3), 10, np.uint8)] * 3
    acc = FidelityAccumulator()
    for run, ref in zip(frames, reference):
        acc.update(run, ref, (0, 0, 64, 64))
    result = acc.result()
    assert result.frames == 3 and result.mouth_frames == 3
    assert result.flicker_mouth == pytest.approx(10.0)  # |30-10| then 0
    assert result.flicker_mouth_reference == 0.0
    assert result.psnr_mouth == pytest.approx(10 * np.log10(255**2 / (2 * 400 / 3)))
    assert result.psnr_frame == pytest.approx(result.psnr_mouth)


# ---------------------------------------------------------------- `engine eval`


def _write_clip(path, frames: int, *, audio: bool = True, seed: int = 0, noise: int = 0):
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 96, 80, "yuv420p"
        video.options = {"crf": "10"}
        if audio:
            sound = out.add_stream("aac", rate=16000)
            sound.layout = "mono"
        base = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
        for i in range(frames):
            img = np.roll(base, i, axis=1)
            if noise:
                img = np.clip(img.astype(int) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio:
            samples = (np.sin(np.arange(frames * 640) * 0.05) * 8000).astype(np.int16)
            for start in range(0, len(samples), 1024):
                chunk = samples[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                frame.sample_rate = 16000
                frame.pts, frame.time_base = start, Fraction(1, 16000)
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_clips")
    _write_clip(root / "run.mp4", 24)
    _write_clip(root / "ref.mp4", 24, noise=8)
    _write_clip(root / "silent.mp4", 24, audio=False)
    return root


def test_engine_eval_command_end_to_end(clips, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "report.json"
    code = main(["eval", "--video", str(clips / "run.mp4"), "--reference", str(clips / "ref.mp4"),
                 "--box", "20,10,70,60", "--random-weights", "--stable", "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert "random network weights" in capsys.readouterr().out
    assert report["frames"] == 24 and report["face_tracks"] == [[0, 24]]
    lse = report["lse"]
    n = min(24, report["audio_samples"] // 640) - 5
    assert lse["tracks"][0]["n_windows"] == n and len(lse["tracks"][0]["mean_dists"]) == 31
    assert lse["av_offset"] == 15 - int(np.argmin(lse["tracks"][0]["mean_dists"]))
    assert report["stable"]["n_windows"] == 1 and report["stable"]["window_starts"] == [0]
    fidelity = report["fidelity"]
    assert 20 < fidelity["psnr_frame"] < 60 and 0 < fidelity["ssim_frame"] < 1
    assert fidelity["mouth_frames"] == 24 and fidelity["flicker_mouth"] > 0


def test_engine_eval_bad_inputs_are_typed(clips, tmp_path):
    from engine.cli import main

    video = str(clips / "run.mp4")
    assert main(["eval", "--video", str(clips / "silent.mp4"), "--box", "1,1,9,9", "--random-weights"]) == 2
    track = tmp_path / "faces.json"
    track.write_text(json.dumps({"boxes": [None] * 24}))
    assert main(["eval", "--video", video, "--face", str(track), "--random-weights"]) == NoFaceError.exit_code
    assert main(["eval", "--video", video, "--box", "9,9,1,1", "--random-weights"]) == 2
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"boxes": [[20, 10, 70, 60]] * 10}))  # 10 frames: LSE yes, StableSyncNet no
    assert main(["eval", "--video", video, "--face", str(short), "--random-weights", "--stable"]) == 2


def test_engine_eval_with_a_face_track_file_uses_aligned_faces(clips, tmp_path):
    """A latentsync-face-track file goes through engine.face.detection; its landmarks give aligned faces."""
    from engine.cli import main

    points = [[[30.0, 25.0], [62.0, 25.0], [46.0, 42.0]]] * 20 + [None] * 4  # brow left, brow right, nose
    track = tmp_path / "track.json"
    track.write_text(json.dumps({"format": "latentsync-face-track", "version": 1, "landmarks3": points}))
    out = tmp_path / "report.json"
    code = main(["eval", "--video", str(clips / "run.mp4"), "--face", str(track), "--random-weights",
                 "--stable", "--no-syncnet", "--json", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["face_tracks"] == [[0, 20]] and report["lse"] is None
    assert report["stable"]["face_crop"] == "aligned" and report["stable"]["n_windows"] == 1
