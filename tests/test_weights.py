"""Model resolution and strict, safe loading through the user code path, with checkpoints written in the
official layouts (the e2e golden weights, tiny-random, a fake Hugging Face cache)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.cli import main as cli_main
from engine.errors import CheckpointError, InvalidInputError
from engine.models import LatentSyncUNet
from engine.weights import (
    MODELS,
    load_models,
    load_unet_checkpoint,
    load_vae,
    model_names,
    read_checkpoint,
    resolve_model,
    write_official_unet_checkpoint,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # fake hub snapshot id


@pytest.fixture(scope="module")
def golden_unet_state(golden):
    return load_file(golden / "unet_tiny_weights.safetensors")


@pytest.fixture(scope="module")
def e2e_dir(golden, golden_unet_state, tmp_path_factory):
    """golden/e2e_demo1/weights with latentsync_unet.pt written as its README says (official layout)."""
    root = tmp_path_factory.mktemp("e2e") / "weights"
    shutil.copytree(golden / "e2e_demo1" / "weights", root)
    write_official_unet_checkpoint(golden_unet_state, root / "latentsync_unet.pt")
    return root


@pytest.fixture(scope="module")
def e2e_models(e2e_dir):
    return load_models(e2e_dir, resolution=256)


def _copy_layout(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tiny_config(e2e_dir):
    return json.loads((e2e_dir / "unet_config.json").read_text())


# ---------------------------------------------------------------- registry and hub resolution

def test_registry():
    assert model_names() == ["latentsync-1.6", "latentsync-1.5", "tiny-random"]
    assert (MODELS["latentsync-1.6"].unet_repo, MODELS["latentsync-1.6"].resolution) == ("ByteDance/LatentSync-1.6", 512)
    assert (MODELS["latentsync-1.5"].unet_repo, MODELS["latentsync-1.5"].resolution) == ("ByteDance/LatentSync-1.5", 256)
    for spec in MODELS.values():
        assert (spec.unet_file, spec.whisper_file, spec.vae_repo) == (
            "latentsync_unet.pt", "whisper/tiny.pt", "stabilityai/sd-vae-ft-mse")
    with pytest.raises(InvalidInputError, match="latentsync-1.6"):
        resolve_model("latentsync-9")


def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"ByteDance/LatentSync-1\.6/latentsync_unet\.pt.*offline"):
        resolve_model("latentsync-1.6", offline=True, cache_dir=tmp_path)


def _fake_hub_repo(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for rel, src in files.items():
        dst = repo_dir / "snapshots" / COMMIT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def test_hub_names_resolve_from_the_hf_cache_offline(tmp_path, e2e_dir, monkeypatch):
    _fake_hub_repo(tmp_path, "ByteDance/LatentSync-1.5", {
        "latentsync_unet.pt": e2e_dir / "latentsync_unet.pt", "whisper/tiny.pt": e2e_dir / "whisper" / "tiny.pt"})
    _fake_hub_repo(tmp_path, "stabilityai/sd-vae-ft-mse", {
        "config.json": e2e_dir / "vae" / "config.json",
        "diffusion_pytorch_model.safetensors": e2e_dir / "vae" / "diffusion_pytorch_model.safetensors"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the environment switch alone keeps it offline
    files = resolve_model("latentsync-1.5", cache_dir=tmp_path)
    snapshot = tmp_path / "models--ByteDance--LatentSync-1.5" / "snapshots" / COMMIT
    assert files.unet_path == snapshot / "latentsync_unet.pt"
    assert files.whisper_path == snapshot / "whisper" / "tiny.pt"
    assert files.vae_dir == tmp_path / "models--stabilityai--sd-vae-ft-mse" / "snapshots" / COMMIT
    assert (files.resolution, files.is_random, files.unet_config["block_out_channels"]) == (256, False, [320, 640, 1280, 1280])
    # The tiny checkpoint cannot pass for the official 1.3 B-parameter U-Net: strict loading says why.
    with pytest.raises(CheckpointError, match=r"latentsync_unet\.pt: checkpoint does not match.*expected shape \[320, 13, 3, 3\], found \[32, 13, 3, 3\]"):
        load_models("latentsync-1.5", cache_dir=tmp_path)


# ---------------------------------------------------------------- local folders (official layout)

def test_loads_the_e2e_golden_layout(e2e_models, golden_unet_state, golden):
    m = e2e_models
    assert (m.resolution, m.is_random) == (256, False)
    assert isinstance(m.unet, LatentSyncUNet) and not m.unet.training
    state = m.unet.state_dict()
    assert state.keys() == golden_unet_state.keys()
    assert all(torch.equal(state[k], v) for k, v in golden_unet_state.items())
    vae_state = load_file(golden / "e2e_demo1" / "weights" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(m.vae.state_dict()[k], v) for k, v in vae_state.items())
    assert m.vae.config.scaling_factor == pytest.approx(0.18215)
    assert type(m.audio_encoder).__name__ == "WhisperAudioEncoder"
    assert m.unet_config == json.loads((golden / "e2e_demo1" / "weights" / "unet_config.json").read_text())


def test_local_folder_needs_a_resolution(e2e_dir):
    with pytest.raises(InvalidInputError, match="resolution"):
        load_models(e2e_dir)


def test_dtype_and_global_step_ignored(e2e_dir, golden_unet_state, tmp_path):
    path = tmp_path / "unet.pt"
    torch.save({"state_dict": golden_unet_state, "global_step": 12345}, path)
    model = load_unet_checkpoint(path, _tiny_config(e2e_dir), dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in model.parameters())


def test_legacy_vae_attention_names_load(e2e_dir, tmp_path):
    """sd-vae-ft-mse's hub file uses the old attention names (query/key/value/proj_attn)."""
    new = load_file(e2e_dir / "vae" / "diffusion_pytorch_model.safetensors")
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in new.items():
        for now, before in names.items():
            if f".attentions.0.{now}." in key:
                key = key.replace(f".{now}.", f".{before}.")
        old[key] = value
    assert old.keys() != new.keys()
    root = _copy_layout(e2e_dir, tmp_path / "m")
    save_file(old, root / "vae" / "diffusion_pytorch_model.safetensors")
    vae = load_vae(root / "vae")
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in new.items())


# ---------------------------------------------------------------- strictness and safety

@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_runs(e2e_dir, tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    root = _copy_layout(e2e_dir, tmp_path / "m")
    torch.save({"state_dict": {"conv_in.weight": Payload()}, "global_step": 0}, root / "latentsync_unet.pt")
    with pytest.raises(CheckpointError, match=r"latentsync_unet\.pt: .*refused without running it"):
        load_models(root, resolution=256)
    with (root / "whisper" / "tiny.pt").open("wb") as f:  # legacy (non-zip) pickle stream too
        pickle.dump({"dims": {}, "model_state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"tiny\.pt: .*refused without running it"):
        read_checkpoint(root / "whisper" / "tiny.pt")
    assert not marker.exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "target,damage,match",
    [
        ("latentsync_unet.pt", lambda p: p.write_bytes(b""), "empty file"),
        ("latentsync_unet.pt", lambda p: p.write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5000000000\n"), "git-lfs pointer"),
        ("latentsync_unet.pt", _truncate, "truncated or corrupt"),
        ("vae/diffusion_pytorch_model.safetensors", _truncate, "truncated or corrupt"),
        ("whisper/tiny.pt", lambda p: p.write_bytes(b""), "empty file"),
    ],
)
def test_broken_files_are_checkpoint_errors(e2e_dir, tmp_path, target, damage, match):
    root = _copy_layout(e2e_dir, tmp_path / "m")
    damage(root / target)
    with pytest.raises(CheckpointError, match=match) as info:
        load_models(root, resolution=256)
    assert str(root / target) in str(info.value)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda sd: sd.pop("conv_out.bias"), r"missing key 'conv_out.bias': expected shape \[4\], found nothing"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(2)), r"unexpected key 'extra.weight'"),
        # the official loader silently drops these three; we refuse them
        (lambda sd: sd.__setitem__("conv_in.weight", torch.zeros(32, 9, 3, 3)),
         r"key 'conv_in.weight': expected shape \[32, 13, 3, 3\], found \[32, 9, 3, 3\]"),
        (lambda sd: sd.__setitem__("conv_out.weight", torch.zeros(8, 32, 3, 3)), r"key 'conv_out.weight'"),
        (lambda sd: sd.__setitem__("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                                   torch.zeros(32, 768)), r"attn2.to_k.weight': expected shape \[32, 384\], found \[32, 768\]"),
    ],
)
def test_mismatched_unet_keys_are_refused(e2e_dir, golden_unet_state, tmp_path, edit, match):
    state = dict(golden_unet_state)
    edit(state)
    path = tmp_path / "latentsync_unet.pt"
    write_official_unet_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_unet_checkpoint(path, _tiny_config(e2e_dir))
    assert str(path) in str(info.value)


def test_absent_position_tables_are_computed(e2e_dir, golden_unet_state, tmp_path):
    """The only leniency: the fixed sinusoid `pos_encoder.pe` buffers may be absent from a checkpoint."""
    pe_keys = [k for k in golden_unet_state if k.endswith(".pos_encoder.pe")]
    assert len(pe_keys) == 40  # 20 motion modules x 2 temporal attentions
    path = tmp_path / "latentsync_unet.pt"
    write_official_unet_checkpoint({k: v for k, v in golden_unet_state.items() if k not in pe_keys}, path)
    state = load_unet_checkpoint(path, _tiny_config(e2e_dir)).state_dict()
    for key in pe_keys:
        torch.testing.assert_close(state[key], golden_unet_state[key], rtol=0, atol=1e-6)


def test_missing_whisper_file(e2e_dir, tmp_path):
    root = _copy_layout(e2e_dir, tmp_path / "m")
    (root / "whisper" / "tiny.pt").unlink()
    with pytest.raises(CheckpointError, match=r"Whisper checkpoint file .*found none"):
        load_models(root, resolution=256)


# ---------------------------------------------------------------- tiny-random and convert

def test_tiny_random_is_materialised_in_official_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSYNC_ENGINE_CACHE", str(tmp_path))
    rng = torch.get_rng_state()
    m = load_models("tiny-random")
    assert torch.equal(torch.get_rng_state(), rng)  # materialising does not disturb the global RNG
    assert (m.name, m.resolution, m.is_random) == ("tiny-random", 256, True)
    root = tmp_path / "tiny-random"
    for rel in ("latentsync_unet.pt", "unet_config.json", "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors", "whisper/tiny.pt", "engine.json"):
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "engine.json").read_text())
    assert "meaningless" in meta["warning"]
    ckpt = torch.load(root / "latentsync_unet.pt", weights_only=True)
    assert set(ckpt) == {"state_dict", "global_step"}
    # a U-Net forward at the preset resolution (256 px -> 32x32 latents), 2 frames
    out = m.unet(torch.randn(1, 13, 2, 32, 32), torch.tensor(501), torch.randn(2, 50, 384))
    assert out.shape == (1, 4, 2, 32, 32) and bool(out.abs().sum() > 0)
    # tampering is detected through the hashes recorded in engine.json
    with (root / "whisper" / "tiny.pt").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_models("tiny-random")


def test_convert_round_trip(e2e_dir, e2e_models, tmp_path):
    out = tmp_path / "converted"
    code = cli_main(["convert", "--model", str(e2e_dir), "--out", str(out), "--resolution", "256", "--dtype", "fp16"])
    assert code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "engine.json", "unet.safetensors", "unet_config.json", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "whisper/encoder.safetensors"]
    assert all(v.dtype == torch.float16 for v in load_file(out / "unet.safetensors").values())
    back = load_models(out)  # resolution comes from engine.json
    assert back.resolution == 256 and not back.is_random
    for mine, ref in ((back.unet, e2e_models.unet), (back.vae, e2e_models.vae)):
        ref_state = ref.state_dict()
        for key, value in mine.state_dict().items():
            torch.testing.assert_close(value, ref_state[key].half().float(), rtol=0, atol=0)
    ref_audio = e2e_models.audio_encoder.state_dict()
    assert all(torch.equal(v, ref_audio[k]) for k, v in back.audio_encoder.state_dict().items())
    # an existing output is not overwritten by accident
    assert cli_main(["convert", "--model", str(e2e_dir), "--out", str(out), "--resolution", "256"]) == InvalidInputError.exit_code


@pytest.mark.requires_cuda
def test_tiny_random_half_precision_on_cuda(tmp_path):
    from engine.models.vae import vae_decode, vae_encode
    from engine.scheduler import denoise

    m = load_models("tiny-random", device="cuda", dtype=torch.float16, cache_dir=tmp_path)
    assert next(m.unet.parameters()).dtype == torch.float16 and next(m.vae.parameters()).is_cuda
    generator = torch.Generator("cuda").manual_seed(0)
    faces = torch.rand(2, 3, 256, 256, device="cuda") * 2 - 1
    ref = vae_encode(m.vae, faces, generator=generator)[None].transpose(1, 2)  # [1,4,2,32,32]
    noise = torch.randn(1, 4, 2, 32, 32, device="cuda", dtype=torch.float16, generator=generator)
    mask = torch.ones(1, 1, 2, 32, 32, device="cuda", dtype=torch.float16)
    audio = torch.randn(2, 50, 384, device="cuda")
    out = denoise(m.unet, noise, mask, ref, ref, audio, steps=3, guidance_scale=1.5, deepcache_interval=2)
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
    assert vae_decode(m.vae, out[0].transpose(0, 1)).shape == (2, 3, 256, 256)
