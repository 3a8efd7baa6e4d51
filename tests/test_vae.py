"""VAE conventions against the official e2e golden run: posterior samples, RNG order, decode, configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.errors import InvalidInputError
from engine.models.vae import (
    build_vae,
    official_vae_config,
    posterior_sample,
    tiny_vae_config,
    vae_decode,
    vae_encode,
    vae_posterior,
)
from engine.weights import load_vae

SEED = 42  # the e2e golden run's seed
CHUNKS = ((0, 16), (16, 16), (32, 2))  # (first output frame, frames) of the 34-frame e2e run
SD_VAE_PARAMS = 83_653_863  # stabilityai/sd-vae-ft-mse AutoencoderKL


@pytest.fixture(scope="module")
def e2e(golden):
    return load_file(golden / "e2e_demo1" / "expected.safetensors")


@pytest.fixture(scope="module")
def tiny_vae(golden):
    return load_vae(golden / "e2e_demo1" / "weights" / "vae")


@pytest.fixture(scope="module")
def mask256(golden):
    """The official fixed mask at 256 (float64 [R,R], exactly 0/1 at this size)."""
    mask = load_file(golden / "face_align_512_fp32.safetensors")["fixed_mask_256_u8"].double() / 255.0
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    return mask


def _pixels(faces_u8: torch.Tensor) -> torch.Tensor:
    return (faces_u8.float() / 255.0 - 0.5) / 0.5  # [f,3,R,R] float32, as the official ImageProcessor


def test_official_config_is_sd_vae_ft_mse():
    with torch.device("meta"):
        vae = build_vae(official_vae_config())
    assert sum(p.numel() for p in vae.parameters()) == SD_VAE_PARAMS
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert vae.config.shift_factor == 0.0


def test_tiny_config_matches_golden_file(golden):
    stored = json.loads((golden / "e2e_demo1" / "weights" / "vae" / "config.json").read_text())
    assert tiny_vae_config() == {k: v for k, v in stored.items() if not k.startswith("_")}


def test_encode_reproduces_official_random_draws(e2e, tiny_vae, mask256):
    """manual_seed(42): noise draw, then per chunk masked + ref posterior samples (spec 1.7)."""
    faces = e2e["aligned_faces_u8_sel"]  # [6,3,256,256] at output positions sel_index
    position = {int(i): n for n, i in enumerate(e2e["aligned_faces_sel_index"])}
    torch.manual_seed(SEED)
    assert torch.equal(torch.randn(1, 4, 1, 32, 32), e2e["init_noise"])
    for chunk, (start, frames) in enumerate(CHUNKS):
        masked_ref = e2e[f"chunk{chunk}_masked_image_latents"][0].transpose(0, 1)  # [f,4,h,w]
        ref_ref = e2e[f"chunk{chunk}_ref_latents"][0].transpose(0, 1)
        if frames == len([i for i in range(start, start + frames) if i in position]):
            # Whole chunk stored (the 2-frame last chunk): the public one-call path.
            pixels = _pixels(faces[[position[i] for i in range(start, start + frames)]])
            masked = vae_encode(tiny_vae, pixels * mask256)  # float64 product, cast to the VAE dtype inside
            ref = vae_encode(tiny_vae, pixels)
            rows = slice(None)
        else:
            # Only the chunk's first face is stored: same draws (f frames) on the first frame's posterior.
            pixels = _pixels(faces[[position[start]]])
            mean, std = vae_posterior(tiny_vae, pixels * mask256)
            masked = posterior_sample(mean.expand(frames, -1, -1, -1), std.expand(frames, -1, -1, -1))
            mean, std = vae_posterior(tiny_vae, pixels)
            ref = posterior_sample(mean.expand(frames, -1, -1, -1), std.expand(frames, -1, -1, -1))
            rows = slice(0, 1)
        torch.testing.assert_close(masked[rows], masked_ref[rows], rtol=0, atol=1e-5)
        torch.testing.assert_close(ref[rows], ref_ref[rows], rtol=0, atol=1e-5)


def test_generator_and_mode(tiny_vae):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    a = vae_encode(tiny_vae, pixels, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    b = vae_encode(tiny_vae, pixels)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = torch.get_rng_state()
    mode = vae_encode(tiny_vae, pixels, sample=False)
    assert torch.equal(torch.get_rng_state(), state)  # the mode draws nothing
    mean, std = vae_posterior(tiny_vae, pixels)
    torch.testing.assert_close(mode, mean * 0.18215, rtol=0, atol=0)
    assert mode.shape == (2, 4, 8, 8) and bool((std > 0).all())
    assert not torch.equal(a, mode)


def test_decode_matches_official_synced_faces(e2e, tiny_vae, mask256):
    """Decode the final latents of each chunk's first frame; paste with the mask as the pipeline does."""
    latents = torch.stack([e2e[f"chunk{c}_final_latents"][0, :, 0] for c in range(len(CHUNKS))])  # [3,4,32,32]
    decoded = vae_decode(tiny_vae, latents)
    assert decoded.shape == (3, 3, 256, 256)
    assert decoded.abs().max() > 1.0  # not clamped
    mask = mask256.float()
    ref = _pixels(e2e["aligned_faces_u8_sel"][[0, 1, 4]])  # output frames 0, 16, 32
    pasted = decoded * (1 - mask) + ref * mask
    torch.testing.assert_close(pasted, e2e["synced_faces_chunkfirst"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 4, 64, 64), (1, 3, 60, 64)])
def test_encode_rejects_bad_pixels(tiny_vae, shape):
    with pytest.raises(InvalidInputError, match="expected"):
        vae_encode(tiny_vae, torch.zeros(shape))


def test_decode_rejects_bad_latents(tiny_vae):
    with pytest.raises(InvalidInputError, match=r"\[f,4,h,w\]"):
        vae_decode(tiny_vae, torch.zeros(1, 3, 8, 8))
