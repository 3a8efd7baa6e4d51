"""LatentSync U-Net: key layout vs the official manifest, golden parity, DeepCache split, shapes, export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InvalidInputError
from engine.models import LatentSyncUNet, official_unet_config, tiny_unet_config
from engine.models.unet_blocks import FrameJointGroupNorm

PARITY_ATOL = 1e-4  # fp32 vs official fp32 (fp32 vs fp64 of the official code: 2e-6)
CROSS_DIM = 384
AUDIO_TOKENS = 50


@pytest.fixture(scope="module")
def tiny(golden) -> LatentSyncUNet:
    model = LatentSyncUNet.from_config(tiny_unet_config()).eval()
    model.load_state_dict(load_file(golden / "unet_tiny_weights.safetensors"), strict=True)
    return model


def _inputs(b: int, f: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(b, 13, f, h, w, generator=g)
    timestep = torch.tensor(701)
    audio = torch.randn(b * f, AUDIO_TOKENS, CROSS_DIM, generator=g)
    return sample, timestep, audio


def test_official_config_matches_manifest(golden):
    manifest = json.loads((golden / "manifest_unet_stage2_512.json").read_text())
    with torch.device("meta"):
        model = LatentSyncUNet.from_config(official_unet_config())
    state = model.state_dict()
    assert list(state) == list(manifest["keys"])  # same keys, same order
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in manifest["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert sum(b.numel() for b in model.buffers()) == manifest["num_buffer_elements"]
    assert model.config == official_unet_config()


def test_tiny_config_and_weights_match_golden(golden, tiny):
    golden_cfg = json.loads((golden / "unet_tiny_config.json").read_text())
    assert tiny_unet_config() == golden_cfg["model_config"]
    assert sum(p.numel() for p in tiny.parameters()) == golden_cfg["num_parameters"]
    assert len(tiny.state_dict()) == golden_cfg["num_keys"]


@pytest.mark.parametrize("case", ["t0", "t1"])
def test_parity_with_official_case1(golden, tiny, case):
    data = load_file(golden / "unet_case1.safetensors")
    with torch.no_grad():
        out = tiny(data["sample"], data[f"timestep_{case}"], data["encoder_hidden_states"])
    assert out.shape == data[f"out_{case}"].shape and out.dtype == torch.float32
    torch.testing.assert_close(out, data[f"out_{case}"], atol=PARITY_ATOL, rtol=0)


def test_deepcache_split_reproduces_forward(tiny):
    sample, timestep, audio = _inputs(2, 5, 16, 16)
    with torch.no_grad():
        plain = tiny(sample, timestep, audio)
        noise, deep = tiny.forward_full(sample, timestep, audio)
        shallow = tiny.forward_shallow(sample, timestep, audio, deep)
        other_t = tiny.forward_shallow(sample, torch.tensor(51), audio, deep)
    assert deep.shape == (2, 32, 5, 16, 16)
    assert torch.equal(noise, plain)
    torch.testing.assert_close(shallow, plain, atol=1e-6, rtol=0)
    assert (other_t - plain).abs().max() > 1e-3  # the shallow step really uses its own timestep


@pytest.mark.parametrize(("b", "f", "h", "w"), [(1, 1, 8, 8), (2, 5, 9, 13), (1, 24, 8, 8), (1, 3, 17, 6)])
def test_any_frame_count_and_latent_size(tiny, b, f, h, w):
    sample, timestep, audio = _inputs(b, f, h, w)
    with torch.no_grad():
        noise, deep = tiny.forward_full(sample, timestep, audio)
        shallow = tiny.forward_shallow(sample, timestep, audio, deep)
    assert noise.shape == (b, 4, f, h, w) and deep.shape == (b, 32, f, h, w)
    assert torch.isfinite(noise).all()
    torch.testing.assert_close(shallow, noise, atol=1e-6, rtol=0)


def test_frames_interact_and_batches_do_not(tiny):
    sample, timestep, audio = _inputs(2, 4, 8, 8)
    with torch.no_grad():
        both = tiny(sample, timestep, audio)
        first = tiny(sample[:1], timestep, audio[:4])
        changed = sample.clone()
        changed[:, :, 3] += 1.0
        moved = tiny(changed, timestep, audio)
    # batch elements are independent up to the accumulation order of batched GEMMs (1.8e-5 seen on a 2-core Xeon)
    torch.testing.assert_close(both[:1], first, atol=5e-5, rtol=0)
    assert (moved[:, :, 0] - both[:, :, 0]).abs().max() > 1e-4  # frame 3 affects frame 0 (norms, motion)


def test_timestep_forms_agree(tiny):
    sample, _, audio = _inputs(2, 2, 8, 8)
    with torch.no_grad():
        scalar = tiny(sample, torch.tensor(500), audio)
        as_int = tiny(sample, 500, audio)
        per_batch = tiny(sample, torch.tensor([500.0, 500.0]), audio)
        mixed = tiny(sample, torch.tensor([500, 20]), audio)
        four_d = tiny(sample, 500, audio.reshape(2, 2, AUDIO_TOKENS, CROSS_DIM))
    assert torch.equal(scalar, as_int) and torch.equal(scalar, four_d)
    torch.testing.assert_close(per_batch, scalar, atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[:1], scalar[:1], atol=1e-6, rtol=0)
    assert (mixed[1:] - scalar[1:]).abs().max() > 1e-3


def test_frame_joint_group_norm_matches_5d_group_norm():
    torch.manual_seed(0)
    b, f, c, h, w = 2, 3, 32, 5, 7
    norm = FrameJointGroupNorm(8, c, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x5 = torch.randn(b, c, f, h, w) * 3 + 2
    reference = torch.nn.functional.group_norm(x5, 8, norm.weight, norm.bias, 1e-5)
    folded = x5.transpose(1, 2).reshape(b * f, c, h, w)
    out = norm(folded, f).reshape(b, f, c, h, w).transpose(1, 2)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("shape", "f_audio", "what"),
    [((1, 12, 2, 8, 8), 2, "sample shape"), ((1, 13, 25, 8, 8), 25, "frame count"), ((1, 13, 2, 8, 8), 3, "rows")],
)
def test_bad_inputs_raise_typed_errors(tiny, shape, f_audio, what):
    with pytest.raises(InvalidInputError, match=what):
        tiny(torch.zeros(shape), 1, torch.zeros(f_audio, AUDIO_TOKENS, CROSS_DIM))


def test_bad_deep_feature_and_config_raise(tiny):
    sample, timestep, audio = _inputs(1, 2, 8, 8)
    with pytest.raises(InvalidInputError, match="deep_feature"):
        tiny.forward_shallow(sample, timestep, audio, torch.zeros(1, 32, 2, 4, 4))
    with pytest.raises(InvalidInputError, match="unet config keys"):
        LatentSyncUNet.from_config({**tiny_unet_config(), "bogus": 1})
    with pytest.raises(InvalidInputError, match="use_linear_projection"):
        LatentSyncUNet.from_config({**tiny_unet_config(), "use_linear_projection": True})


def test_bfloat16_forward_tracks_fp32(tiny):
    sample, timestep, audio = _inputs(1, 4, 8, 8)
    low = LatentSyncUNet.from_config(tiny_unet_config()).eval()
    low.load_state_dict(tiny.state_dict())
    low.to(torch.bfloat16)
    with torch.no_grad():
        ref = tiny(sample, timestep, audio)
        out = low(sample.bfloat16(), timestep, audio.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_tracks_fp32(tiny, dtype):
    sample, timestep, audio = _inputs(2, 16, 16, 16)
    with torch.no_grad():
        ref = tiny(sample, timestep, audio)
        model = LatentSyncUNet.from_config(tiny_unet_config()).eval()
        model.load_state_dict(tiny.state_dict())
        model.to("cuda", dtype)
        out = model(sample.to("cuda", dtype), timestep, audio.to("cuda", dtype)).float().cpu()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.slow  # ~15-60 s of tracing on a shared 2-core box
def test_onnx_export_traces_dynamic_shapes(tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    sample, timestep, audio = _inputs(1, 3, 8, 8)
    path = tmp_path / "unet.onnx"
    dynamic = {"sample": {0: "b", 2: "f", 3: "h", 4: "w"}, "audio": {0: "bf"}, "noise": {0: "b", 2: "f", 3: "h", 4: "w"}}
    torch.onnx.export(tiny, (sample, timestep.float().reshape(1), audio), str(path), dynamo=False, opset_version=18,
                      input_names=["sample", "timestep", "audio"], output_names=["noise"], dynamic_axes=dynamic)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sample, timestep, audio = _inputs(1, 5, 9, 13, seed=1)
    with torch.no_grad():
        ref = tiny(sample, timestep, audio)
    feeds = {"sample": sample.numpy(), "timestep": timestep.float().reshape(1).numpy(), "audio": audio.numpy()}
    out = torch.from_numpy(session.run(None, feeds)[0])
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def test_attention_splits_huge_batches(monkeypatch):
    from engine.models import unet_attention

    torch.manual_seed(0)
    attention = unet_attention.Attention(16, 2).eval()
    x = torch.randn(7, 5, 16)
    with torch.no_grad():
        whole = attention(x)
        monkeypatch.setattr(unet_attention, "MAX_SDPA_BATCH", 3)
        split = attention(x)
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)
