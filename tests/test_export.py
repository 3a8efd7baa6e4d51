"""ONNX export by spec: names, dynamic axes, onnx.checker, IR pin, and ONNX Runtime parity with PyTorch."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from engine.errors import InvalidInputError
from export import IR_VERSION, SPECS, BuildShape, ShapeSettings, export_onnx, geometry_of, get_spec, wrap
from export.onnx_export import ensure_onnx, stale_reason, export_fields
from export.artifacts import weights_sha256

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FP32_ATOL = 1e-4  # tiny model, fp32 ORT vs PyTorch (measured <= 2.3e-5)
FP16_ATOL = 2e-2  # fp16 graph vs fp32 PyTorch (measured 3.7e-3 on the tiny VAE decoder, |x| up to 3)


def _ort_run(path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _torch_run(network: str, module, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrap(network, module)(*feeds.values())
    return [t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def tiny_vae():
    from engine.models.vae import build_vae, tiny_vae_config

    torch.manual_seed(0)
    return build_vae(tiny_vae_config())


@pytest.fixture(scope="module")
def tiny_models():
    from engine.weights import load_models

    return load_models("tiny-random")


@pytest.fixture(scope="module")
def exported(tiny_random_onnx):
    """`engine export --model tiny-random --out DIR` run once per test run (conftest.tiny_random_onnx, in a private
    engine cache, where it registers the folder); the tests below read its files instead of exporting again (each
    dynamo export takes seconds)."""
    return tiny_random_onnx


@pytest.fixture(scope="module")
def fp16_decoder(tiny_vae, tmp_path_factory):
    """The tiny VAE's decoder exported in fp16, once."""
    return export_onnx("vae_decoder", copy.deepcopy(tiny_vae).half(), tmp_path_factory.mktemp("fp16"))


def _copy_export(exported, name: str, dest):
    """A copy of one exported file and its manifest (for tests that change files)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".json"):
        shutil.copy2(exported / (name + suffix), dest / (name + suffix))
    return dest / name


def _expected(path) -> dict:
    """The export fields recorded in `path`'s manifest (what a run that made it would expect)."""
    from export.onnx_export import export_fields

    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    return {k: manifest[k] for k in export_fields(manifest["network"], torch.float32, "x")}


def test_specs_names_axes_and_profiles():
    unet = get_spec("unet")
    assert unet.input_names == ("sample", "timestep", "encoder_hidden_states")
    assert unet.output_names == ("noise_pred", "deep_feature")
    assert get_spec("unet_shallow").input_names[-1] == "deep_feature"
    assert unet.dynamic_axes()["sample"] == {0: "batch", 2: "frames", 3: "height", 4: "width"}
    assert unet.dynamic_axes()["encoder_hidden_states"] == {0: "batch_x_frames"}
    assert get_spec("audio_encoder").dynamic_axes()["mel"] == {0: "batch", 2: "length"}
    geometry = geometry_of()  # official sizes
    profile = unet.profile(geometry, BuildShape(batch=2, frames=16, latent_size=64))
    assert profile["sample"] == ((1, 13, 1, 64, 64), (2, 13, 16, 64, 64), (2, 13, 16, 64, 64))
    assert profile["encoder_hidden_states"] == ((1, 50, 384), (32, 50, 384), (32, 50, 384))
    assert profile["timestep"] == ((1,), (2,), (2,))
    vae = get_spec("vae_decoder").profile(geometry, BuildShape(frames=16, latent_size=32))
    assert vae["latents"] == ((1, 4, 32, 32), (16, 4, 32, 32), (16, 4, 32, 32))
    audio = get_spec("audio_encoder").profile(geometry, BuildShape(audio_batch=4))
    assert audio["mel"] == ((1, 80, 3000), (1, 80, 3000), (4, 80, 3000))
    assert set(SPECS) == {"unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder"}


def test_check_inputs_names_expected_and_found():
    spec, geometry = get_spec("unet"), geometry_of()
    feeds = spec.sample_inputs(geometry, ShapeSettings(batch=2, frames=3, height=4, width=4))
    assert spec.check_inputs(feeds, geometry) == ShapeSettings(batch=2, frames=3, height=4, width=4)
    feeds["encoder_hidden_states"] = torch.zeros(5, 50, 384)  # rows must be batch*frames = 6
    with pytest.raises(InvalidInputError, match=r"encoder_hidden_states shape: expected \(6, 50, 384\), found \(5, 50, 384\)"):
        spec.check_inputs(feeds, geometry)
    with pytest.raises(InvalidInputError, match="network"):
        get_spec("text_encoder")


def test_export_vae_checker_ir_and_parity_at_new_shapes(exported, tiny_models):
    vae = tiny_models.vae
    geometry = geometry_of(vae=vae)
    for network in ("vae_encoder", "vae_decoder"):
        path = exported / f"{network}.onnx"
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        assert model.ir_version == IR_VERSION
        assert [i.name for i in model.graph.input] == list(get_spec(network).input_names)
        assert [o.name for o in model.graph.output] == list(get_spec(network).output_names)
        # traced at batch 2 / 8x8 latents; run at batch 3 / 12x12 (dynamic axes really dynamic)
        feeds = get_spec(network).sample_inputs(geometry, ShapeSettings(batch=3, height=12, width=12), seed=3)
        for got, want in zip(_ort_run(path, feeds), _torch_run(network, vae, feeds)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=FP32_ATOL)


def test_export_fp16_vae_decoder_tolerance(tiny_vae, fp16_decoder):
    assert fp16_decoder.name == "vae_decoder.fp16.onnx"
    feeds = get_spec("vae_decoder").sample_inputs(geometry_of(vae=tiny_vae), ShapeSettings(batch=2, height=8, width=8))
    got = _ort_run(fp16_decoder, {k: v.half() for k, v in feeds.items()})[0].astype(np.float32)
    want = _torch_run("vae_decoder", tiny_vae, feeds)[0]
    err = float(np.abs(got - want).max())
    assert 0 < err < FP16_ATOL, err  # fp16 really ran (non-zero error) and stays within tolerance


@pytest.mark.parametrize("network", ["unet", "unet_shallow", "vae_encoder", "vae_decoder", "audio_encoder"])
def test_engine_export_tiny_random_matches_pytorch(network, exported, tiny_models):
    from export.onnx_export import onnx_filename

    path = exported / onnx_filename(network)
    assert path.exists() and json.loads((path.parent / (path.name + ".json")).read_text())["network"] == network
    onnx.checker.check_model(str(path))
    assert onnx.load(str(path), load_external_data=False).ir_version == IR_VERSION
    module = {"unet": tiny_models.unet, "unet_shallow": tiny_models.unet, "vae_encoder": tiny_models.vae,
              "vae_decoder": tiny_models.vae, "audio_encoder": tiny_models.audio_encoder}[network]
    geometry = geometry_of(unet=tiny_models.unet, vae=tiny_models.vae, audio_encoder=tiny_models.audio_encoder)
    # shapes unlike the traced ones: batch 1, 5 frames, 8x8 latents, 600 mel frames
    feeds = get_spec(network).sample_inputs(geometry, ShapeSettings(batch=1, frames=5, height=8, width=8, length=600), seed=7)
    for got, want in zip(_ort_run(path, feeds), _torch_run(network, module, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=FP32_ATOL)


def test_ensure_onnx_reuses_current_and_reexports_changed_weights(exported, tiny_models, tmp_path, caplog):
    from engine.backends import EngineConfig
    from engine.backends.select import BackendContext

    first = _copy_export(exported, "vae_decoder.onnx", tmp_path)
    vae = copy.deepcopy(tiny_models.vae)
    key = BackendContext.of(tiny_models, torch.device("cpu"), EngineConfig()).weights_key("vae")  # as `engine export`
    mtime = first.stat().st_mtime_ns
    assert ensure_onnx("vae_decoder", vae, tmp_path, weights_hash=key) == first and first.stat().st_mtime_ns == mtime
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(1.0)  # weights changed in memory: keyed by their tensors now
    assert "weights_sha256" in stale_reason(first, export_fields("vae_decoder", torch.float32, weights_sha256(vae)))
    with caplog.at_level(logging.INFO, logger="export.onnx_export"):
        again = ensure_onnx("vae_decoder", vae, tmp_path)
    assert again == first and again.stat().st_mtime_ns != mtime
    assert any("weights_sha256" in r.getMessage() for r in caplog.records)
    (tmp_path / (first.name + ".json")).unlink()  # a file without manifest is never trusted
    assert stale_reason(first, export_fields("vae_decoder", torch.float32, weights_sha256(vae))) == "no manifest beside it"


def test_export_rejects_unknown_network(tiny_vae, tmp_path):
    with pytest.raises(InvalidInputError, match="network: expected one of"):
        export_onnx("vae", tiny_vae, tmp_path)
    assert not any(tmp_path.iterdir())


def test_large_model_layout_gathers_external_tensors_into_one_data_file(exported, tiny_models, tmp_path, monkeypatch):
    """Graphs over 2 GiB come from torch as one file per tensor; they are gathered into <name>.onnx.data."""
    from export import onnx_export
    from export.onnx_export import _finalise

    exported = exported / "vae_decoder.onnx"
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    model = onnx.load(str(exported))
    onnx.save_model(model, str(raw_dir / "raw.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(raw_dir.iterdir())) > 10  # torch's > 2 GiB layout: many files
    small = tmp_path / "inlined" / "vae_decoder.onnx"
    small.parent.mkdir()
    _finalise(raw_dir / "raw.onnx", small, network="vae_decoder", ir_version=IR_VERSION)
    assert [p.name for p in small.parent.iterdir()] == ["vae_decoder.onnx"]  # small weights: one self-contained file
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # as if the weights were over the limit
    dest = tmp_path / "out" / "vae_decoder.onnx"
    dest.parent.mkdir()
    _finalise(raw_dir / "raw.onnx", dest, network="vae_decoder", ir_version=IR_VERSION)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["vae_decoder.onnx", "vae_decoder.onnx.data"]
    onnx.checker.check_model(str(dest))
    feeds = get_spec("vae_decoder").sample_inputs(geometry_of(vae=tiny_models.vae), ShapeSettings(batch=1, height=8, width=8))
    np.testing.assert_array_equal(_ort_run(dest, feeds)[0], _ort_run(exported, feeds)[0])
    np.testing.assert_array_equal(_ort_run(small, feeds)[0], _ort_run(exported, feeds)[0])


def test_edited_onnx_file_is_stale_but_a_touched_copy_is_not(exported, tmp_path):
    import os

    path = _copy_export(exported, "vae_encoder.onnx", tmp_path)
    expected = _expected(path)
    os.utime(path, ns=(1, 1))  # copied elsewhere: new mtime, same bytes
    assert stale_reason(path, expected) is None
    path.write_bytes(path.read_bytes() + b"\0")
    assert "sha256 differs" in stale_reason(path, expected)


def test_fp16_graph_keeps_normalisations_in_fp32(tiny_vae, fp16_decoder, exported):
    """The VAE's GroupNorms export as fp16 InstanceNormalization; the edit computes each of them (and softmax) in fp32."""
    from export.graph_edits import FP32_OPS, value_types

    path = fp16_decoder
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["fp32_norms"] is True and manifest["fp32_norm_nodes"] > 0
    model = onnx.load(str(path))
    types = value_types(model)
    norms = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert {n.op_type for n in norms} >= {"InstanceNormalization", "Softmax"}
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)
    assert types[model.graph.output[0].name] == onnx.TensorProto.FLOAT16  # the graph's interface stays fp16
    feeds = get_spec("vae_decoder").sample_inputs(geometry_of(vae=tiny_vae), ShapeSettings(batch=2, height=8, width=8))
    got = _ort_run(path, {k: v.half() for k, v in feeds.items()})[0].astype(np.float32)
    want = _torch_run("vae_decoder", tiny_vae, feeds)[0]
    assert np.isfinite(got).all() and float(np.abs(got - want).max()) < FP16_ATOL
    fp32 = json.loads((exported / "vae_decoder.onnx.json").read_text())
    assert fp32["fp32_norms"] is True and fp32["fp32_norm_nodes"] == 0  # an fp32 graph is left as exported


def test_exporter_choice_is_recorded_and_whisper_graph_follows_its_compute_dtype(tiny_models, tmp_path):
    from export.onnx_export import EXPORTERS

    encoder = copy.deepcopy(tiny_models.audio_encoder)
    encoder.compute_dtype = torch.float16  # what a CUDA fp16 run sets (engine.audio.whisper.follow_run_dtype)
    path = export_onnx("audio_encoder", encoder, tmp_path)
    assert path.name == "audio_encoder.fp16.onnx"
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    manifest = json.loads((tmp_path / (path.name + ".json")).read_text())
    assert manifest["exporter"] == EXPORTERS["audio_encoder"] == "dynamo" and manifest["dtype"] == "fp16"
    assert EXPORTERS["unet"] == "torchscript"  # see the reason beside EXPORTERS
