"""Face alignment, mask and restore against the official golden fixtures (section D and e2e_demo1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from engine.errors import InvalidInputError
from engine.face import FaceAligner, load_fixed_mask, mask_to_latent, prepare_masks_and_masked_images
from engine.face.align import lanczos4_resize
from engine.face.restore import cv2_erode, gaussian_blur, gaussian_kernel1d


@pytest.fixture(scope="module")
def face_golden(golden):
    return load_file(str(golden / "face_align_512_fp32.safetensors"))


@pytest.fixture(scope="module")
def e2e(golden):
    folder = golden / "e2e_demo1"
    inputs = load_file(str(folder / "inputs.safetensors"))
    expected = load_file(str(folder / "expected.safetensors"))
    frames = np.load(folder / "inputs_frames.npz")["frames"]
    return inputs, expected, frames


def _golden_restore_face(resized_u8: np.ndarray) -> torch.Tensor:
    """The fixture's restore input: resized face -> [-1,1], lower half negated. [3,512,512]"""
    face = torch.from_numpy(resized_u8).permute(2, 0, 1).float() / 255 * 2 - 1
    face[:, 256:] *= -1
    return face


def test_matrices_and_smoothing_state_match_golden(face_golden):
    aligner = FaceAligner(512)
    matrices = aligner.compute_matrices(face_golden["landmarks3"])
    np.testing.assert_allclose(matrices, face_golden["affine_matrices"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(aligner.p_bias, face_golden["p_bias_final"], atol=1e-6, rtol=0)
    aligner.reset()  # one frame at a time carries the same state; reset starts over
    singles = np.stack([aligner.compute_matrices(lm)[0] for lm in face_golden["landmarks3"]])
    np.testing.assert_array_equal(singles, matrices)
    aligner.reset()
    np.testing.assert_array_equal(aligner.compute_matrices(face_golden["landmarks3"][3])[0],
                                  FaceAligner(512).compute_matrices(face_golden["landmarks3"][3])[0])
    assert not np.allclose(aligner.compute_matrices(face_golden["landmarks3"][3])[0], matrices[3], atol=1e-3)


@pytest.mark.parametrize("index", [0, 7])
def test_aligned_and_resized_faces_match_golden(face_golden, index):
    aligner = FaceAligner(512)
    aligner.compute_matrices(face_golden["landmarks3"][:index])  # smoothing state of the frames before
    crop, matrix = aligner.align(face_golden["frames"][index], face_golden["landmarks3"][index])
    np.testing.assert_allclose(matrix, face_golden["affine_matrices"][index], atol=1e-4, rtol=0)
    assert crop.shape == (560, 420, 3) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - face_golden[f"aligned_face_{index}"]).max() <= 1
    resized = aligner.resize_to_model(face_golden[f"aligned_face_{index}"])
    assert np.abs(resized.astype(int) - face_golden[f"resized_face_{index}"]).max() <= 1


@pytest.mark.parametrize("index", [0, 7])
def test_restored_frames_match_golden_and_whole_frame_path(face_golden, index):
    aligner = FaceAligner(512)
    frame, matrix = face_golden["frames"][index], face_golden["affine_matrices"][index]
    face = _golden_restore_face(face_golden[f"resized_face_{index}"])
    restored = aligner.restore(frame, face, matrix)
    assert np.abs(restored.astype(int) - face_golden[f"restored_frame_{index}"]).max() <= 1
    whole = aligner.restore_batch(torch.from_numpy(frame[None]), face[None], matrix[None], region_only=False)
    np.testing.assert_array_equal(whole[0].numpy(), restored)


def test_fixed_masks_match_golden(face_golden):
    for resolution in (256, 512):
        mask = load_fixed_mask(resolution)
        assert mask.dtype == torch.float64 and mask.shape == (3, resolution, resolution)
        assert torch.equal(mask[0], mask[2])
        np.testing.assert_array_equal(np.round(mask[0].numpy() * 255), face_golden[f"fixed_mask_{resolution}_u8"])
    soft = load_fixed_mask(512)
    assert ((soft > 0) & (soft < 1)).any() and set(load_fixed_mask(256).unique().tolist()) == {0.0, 1.0}


def test_prepare_masks_match_golden(face_golden):
    faces = np.stack([face_golden["resized_face_0"], face_golden["resized_face_7"]])  # 512 -> 256 resize inside
    pixel, masked, masks = prepare_masks_and_masked_images(faces, 256)
    for ours, key in ((pixel, "prep_pixel_values"), (masked, "prep_masked_pixel_values"), (masks, "prep_masks")):
        assert ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), face_golden[key], atol=1e-6, rtol=0)
    chw = prepare_masks_and_masked_images(torch.from_numpy(faces).permute(0, 3, 1, 2), 256)
    assert all(torch.equal(a, b) for a, b in zip(chw, (pixel, masked, masks)))


def test_masked_images_equal_official_float64_product_bitwise():
    faces = torch.randint(0, 256, (2, 512, 512, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixel, masked, masks = prepare_masks_and_masked_images(faces)
    official = pixel.double() * load_fixed_mask(512)  # float64 in the official code
    assert torch.equal(masked.view(torch.int32), official.float().view(torch.int32))  # incl. signed zeros
    assert torch.equal(masks, load_fixed_mask(512)[0:1].float().expand(2, 1, 512, 512))


def test_mask_to_latent_is_nearest():
    masks = load_fixed_mask(256)[0:1].float().expand(2, 1, 256, 256)
    latent = mask_to_latent(masks)
    assert torch.equal(latent, F.interpolate(masks, size=(32, 32)))
    assert int((latent[0, 0] == 0).sum()) == 422  # spec 5.7
    soft = load_fixed_mask(512)[0:1].float()[None]
    assert torch.equal(mask_to_latent(soft), F.interpolate(soft, size=(64, 64)))


def test_e2e_matrices_and_aligned_faces_with_fill(e2e):
    inputs, expected, frames = e2e
    aligner = FaceAligner(256)
    matrices = aligner.compute_matrices(inputs["landmarks3"])  # input order, then ping-pong reuse
    order = expected["frame_source_index"]
    np.testing.assert_allclose(matrices[order], expected["affine_matrices"], atol=1e-4, rtol=0)
    selected = order[expected["aligned_faces_sel_index"]]  # includes frame 28 (9.65 % fill pixels)
    crops = aligner.align_batch(torch.from_numpy(frames[selected]), matrices[selected]).numpy()
    faces = np.stack([aligner.resize_to_model(c).transpose(2, 0, 1) for c in crops])
    diff = np.abs(faces.astype(int) - expected["aligned_faces_u8_sel"])
    assert diff.max() <= 2 and (diff == 0).mean() > 0.98


def test_e2e_restore_at_256(golden, e2e):
    _, expected, frames = e2e
    frames_out = np.load(golden / "e2e_demo1" / "expected_frames.npz")["frames_out"]
    order, matrices = expected["frame_source_index"], expected["affine_matrices"]
    outputs = (0, 16, 32)  # synced_faces_chunkfirst = the restore input of each chunk's first frame
    restored = FaceAligner(256).restore_batch(torch.from_numpy(frames[order[list(outputs)]]),
                                              torch.from_numpy(expected["synced_faces_chunkfirst"]),
                                              matrices[list(outputs)])
    diff = np.abs(restored.numpy().astype(int) - frames_out[list(outputs)])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def _canvas_case(face_golden, offset_xy, scale=1.0, size_hw=(520, 700)):
    """Golden frame 0 pasted on a larger canvas (landmarks moved/scaled along) and its restore inputs."""
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)
    frame = face_golden["frames"][0]
    if scale != 1.0:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x, y = offset_xy
    h, w = frame.shape[:2]
    ys, xs = slice(max(y, 0), min(y + h, size_hw[0])), slice(max(x, 0), min(x + w, size_hw[1]))
    canvas[ys, xs] = frame[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
    landmarks = face_golden["landmarks3"][0] * scale + np.array([x, y], np.float32)
    aligner = FaceAligner(512)
    matrix = aligner.compute_matrices(landmarks)
    face = _golden_restore_face(face_golden["resized_face_0"])
    return aligner, torch.from_numpy(canvas[None]), face[None], matrix


@pytest.mark.parametrize(
    "offset_xy, scale",
    [((150, 120), 1.0),  # face well inside a larger frame: the window is a fraction of it
     ((-170, 300), 1.0),  # face partly outside (left and bottom edges)
     ((400, 50), 0.08)],  # tiny face: w_edge = 0 -> cv2's 3x3 default erosion, 1-tap blur
)
def test_region_restore_equals_whole_frame(face_golden, offset_xy, scale):
    aligner, frames, faces, matrix = _canvas_case(face_golden, offset_xy, scale)
    region = aligner.restore_batch(frames, faces, matrix)
    whole = aligner.restore_batch(frames, faces, matrix, region_only=False)
    assert torch.equal(region, whole)
    changed = (region != frames).any(dim=-1)[0]
    assert changed.any()
    if offset_xy == (150, 120):
        assert changed.float().mean() < 0.6


def test_restore_batch_of_mixed_faces_equals_single_calls(face_golden):
    cases = [_canvas_case(face_golden, (150, 120)), _canvas_case(face_golden, (-170, 300)),
             _canvas_case(face_golden, (400, 50), 0.08)]
    aligner = cases[0][0]
    frames = torch.cat([c[1] for c in cases])
    faces = torch.cat([c[2] for c in cases])
    matrices = np.concatenate([c[3] for c in cases])
    batched = aligner.restore_batch(frames, faces, matrices)
    for i, (_, frame, face, matrix) in enumerate(cases):
        assert torch.equal(batched[i], aligner.restore_batch(frame, face, matrix)[0])
    inplace = frames.clone()
    aligner.restore_batch(inplace, faces, matrices, inplace=True)
    assert torch.equal(inplace, batched)


def test_restore_in_cpu_passes_equals_single_calls(face_golden):
    """More frames than one CPU pass holds (restore.CPU_FRAMES_PER_PASS): the same frames as one call per frame."""
    from engine.face.restore import CPU_FRAMES_PER_PASS

    cases = [_canvas_case(face_golden, (150, 120)), _canvas_case(face_golden, (-170, 300)),
             _canvas_case(face_golden, (400, 50), 0.08)] * 2
    assert len(cases) > CPU_FRAMES_PER_PASS
    aligner = cases[0][0]
    frames = torch.cat([c[1] for c in cases])
    batched = aligner.restore_batch(frames, torch.cat([c[2] for c in cases]), np.concatenate([c[3] for c in cases]))
    for i, (_, frame, face, matrix) in enumerate(cases):
        assert torch.equal(batched[i], aligner.restore_batch(frame, face, matrix)[0])


def test_windowed_align_equals_whole_frame_warp(face_golden):
    """The warp converts only the pixels a crop samples, into a buffer reused across frames: the crops equal the
    whole-frame warp's bit for bit, for padded-row frames (as PyAV decodes them) and faces partly outside."""
    rng = np.random.default_rng(3)
    base = face_golden["frames"][0]
    height, width = base.shape[:2]
    padded = np.zeros((2, height, width + 7, 3), np.uint8)  # rows padded like a decoder's line size
    padded[:, :, :width] = np.stack([base, base[::-1]])
    aligner = FaceAligner(256)
    for k in range(12):
        frame = padded[k % 2, :, :width]  # alternate frames: a stale buffer would show
        assert not frame.flags.c_contiguous
        shift = rng.uniform(-0.6, 0.6, 2) * [width, height]
        landmarks = (face_golden["landmarks3"][k % 8] - [width / 2, height / 2]) * rng.uniform(0.3, 1.5) \
            + [width / 2, height / 2] + shift
        matrix = aligner.compute_matrices(landmarks.astype(np.float32))
        windowed = aligner.align_batch(torch.from_numpy(frame)[None], matrix)
        whole = aligner.align_batch(torch.from_numpy(np.ascontiguousarray(frame))[None], matrix, whole_frame=True)
        assert torch.equal(windowed, whole), k


def test_face_entirely_outside_frame_is_harmless():
    aligner = FaceAligner(256)
    frame = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    crop, matrix = aligner.align(frame, np.array([[5000, 5000], [5040, 5000], [5020, 5030]], np.float32))
    assert (crop == 127).all()
    np.testing.assert_array_equal(aligner.restore(frame, torch.zeros(3, 256, 256), matrix), frame)


def test_align_partly_outside_frame_fills_127(face_golden):
    aligner = FaceAligner(256)
    frame = face_golden["frames"][0][:150]  # cut the frame: most of the crop falls outside
    crop, _ = aligner.align(frame, face_golden["landmarks3"][0])
    assert crop.shape == (280, 210, 3)
    assert (crop[-20:] == 127).all()


def test_torch_lanczos4_equals_cv2(face_golden):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (280, 210, 3), dtype=np.uint8), rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)]
    for image, size in [(face_golden["aligned_face_7"], 512), (noise[0], 256), (noise[1], 256)]:
        ours = lanczos4_resize(torch.from_numpy(image)[None], size)[0].numpy()
        np.testing.assert_array_equal(ours, cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4))
    crops = torch.from_numpy(np.stack([face_golden["aligned_face_0"], face_golden["aligned_face_7"]]))
    batch = FaceAligner(512).resize_batch_to_model(crops)
    np.testing.assert_array_equal(batch.numpy(), np.stack([face_golden["resized_face_0"], face_golden["resized_face_7"]]))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 7, 16])
def test_cv2_erode_matches_opencv(size):
    rng = np.random.default_rng(size)
    mask = rng.random((41, 57)).astype(np.float32)
    mask[6:35, 9:50] = 1.0
    ours = cv2_erode(torch.from_numpy(mask)[None, None], size)[0, 0].numpy()
    np.testing.assert_array_equal(ours, cv2.erode(mask, np.ones((size, size), np.uint8)))


def test_gaussian_blur_matches_conv2d_reference():
    rng = np.random.default_rng(1)
    mask = torch.from_numpy((rng.random((2, 1, 60, 70)) > 0.4).astype(np.float32))
    size, sigma = 9, 0.3 * ((9 - 1) * 0.5 - 1) + 0.8
    kernel = gaussian_kernel1d(size, sigma, "cpu")
    assert abs(float(kernel.sum()) - 1) < 1e-6 and int(kernel.argmax()) == size // 2
    ref = F.conv2d(F.pad(mask, (4, 4, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    ref = F.conv2d(F.pad(ref, (0, 0, 4, 4), mode="reflect"), kernel.view(1, 1, size, 1))
    torch.testing.assert_close(gaussian_blur(mask, size, sigma), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "landmarks, message",
    [(np.array([[10, 10], [50, np.nan], [30, 40]], np.float32), "NaN"),
     (np.full((3, 2), 7, np.float32), "distinct"),
     (np.zeros((4, 2), np.float32), "shape")],
)
def test_bad_landmarks_raise_invalid_input(landmarks, message):
    with pytest.raises(InvalidInputError, match=message):
        FaceAligner(512).align(np.zeros((64, 64, 3), np.uint8), landmarks)


def test_bad_inputs_raise_invalid_input():
    aligner = FaceAligner(256)
    good = np.array([[10, 10], [50, 10], [30, 40]], np.float32)
    with pytest.raises(InvalidInputError, match="frame"):
        aligner.align(np.zeros((64, 64, 3), np.float32), good)
    with pytest.raises(InvalidInputError, match="resolution"):
        FaceAligner(384)
    with pytest.raises(InvalidInputError, match="matrices"):
        aligner.restore_batch(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), torch.zeros(1, 3, 256, 256),
                              np.full((1, 2, 3), np.nan, np.float32))


@pytest.mark.requires_cuda
def test_cuda_matches_cpu(face_golden):
    cpu, gpu = FaceAligner(512), FaceAligner(512, device="cuda")
    frames = torch.from_numpy(face_golden["frames"][:2])
    matrices = face_golden["affine_matrices"][:2]
    crops_gpu = gpu.align_batch(frames, matrices)
    crops_cpu = cpu.align_batch(frames, matrices)
    assert (crops_gpu.cpu().int() - crops_cpu.int()).abs().max() <= 1
    resized = gpu.resize_batch_to_model(crops_gpu).cpu()  # torch Lanczos on the GPU
    np.testing.assert_array_equal(resized.numpy(), cpu.resize_batch_to_model(crops_gpu.cpu()).numpy())
    faces = torch.stack([_golden_restore_face(face_golden[f"resized_face_{i}"]) for i in (0, 7)])
    restored_gpu = gpu.restore_batch(frames, faces, matrices).cpu()
    assert (restored_gpu.int() - cpu.restore_batch(frames, faces, matrices).int()).abs().max() <= 1
