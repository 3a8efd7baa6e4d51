"""The part of ../shared/golden the CUDA tests read, small enough to carry to a GPU machine that lacks ../shared.

`python benchmarks/gpu_check.py --prepare` writes it as one deflated archive into the git-ignored
benchmarks/media/ (at most MAX_BYTES); gpu_check's `tests` step unpacks it into a temporary folder and points
LATENTSYNC_SHARED there when the shared folder itself is absent. Only the tensors those tests use are kept, under
the same file names and keys, so the tests read the subset exactly as they read the full fixtures:

  tests/test_audio.py::test_cuda_fp16_encode_is_close_to_cpu_fp32
      e2e_demo1/inputs.safetensors (audio_16k), expected.safetensors (whisper_feature), weights/whisper/tiny.pt
      (the encoder half of the checkpoint: its decoder keys are ignored by the loader; the positional embedding,
      OpenAI's fixed sinusoids in fp16, is recomputed on unpacking and checked against the original's SHA-256)
  tests/test_face_align.py::test_cuda_matches_cpu
      face_align_512_fp32.safetensors (frames[:2], affine_matrices[:2], resized_face_0, resized_face_7)
  tests/test_runtime_engine.py::test_cuda_batches_match_solo_and_the_face_path_stays_on_the_device
      e2e_demo1/inputs.safetensors (landmarks3, audio_16k), inputs_frames.npz (frames[:8])
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

ARCHIVE = "golden-subset.zip"
MAX_BYTES = 16 * 10**6
SUBSET_MARK = "golden/SUBSET.txt"  # says what this is, inside the unpacked folder

# relative path under golden/ -> {key: leading rows to keep (None: all)}; None: the file as it is
SAFETENSORS = {
    "e2e_demo1/inputs.safetensors": None,
    "e2e_demo1/expected.safetensors": {"whisper_feature": None},
    "face_align_512_fp32.safetensors": {"frames": 2, "affine_matrices": 2, "resized_face_0": None,
                                        "resized_face_7": None},
}
NPZ = {"e2e_demo1/inputs_frames.npz": {"frames": 8}}
WHISPER = "e2e_demo1/weights/whisper/tiny.pt"
WHISPER_PACKED = "whisper-encoder-without-positional-embedding.pt"  # in the archive; tiny.pt is rebuilt from it
POSITIONAL = "encoder.positional_embedding"


def _safetensors(source: Path, keep: dict[str, int | None] | None) -> bytes:
    from safetensors.numpy import load_file, save

    if keep is None:
        return source.read_bytes()
    tensors = load_file(str(source))
    return save({k: (tensors[k] if rows is None else tensors[k][:rows]).copy() for k, rows in keep.items()})


def _npz(source: Path, keep: dict[str, int | None]) -> bytes:
    import numpy as np

    with np.load(source) as data:
        arrays = {k: data[k] if rows is None else data[k][:rows] for k, rows in keep.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _whisper_encoder(source: Path) -> tuple[bytes, dict]:
    """(the encoder's tensors less the positional embedding, as a torch file; how to rebuild that embedding)."""
    import hashlib

    import torch

    from engine.audio.checkpoint import sinusoids

    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    encoder = {k: v for k, v in checkpoint["model_state_dict"].items() if k.startswith("encoder.")}
    positional = encoder.pop(POSITIONAL)
    rebuilt = sinusoids(*positional.shape).to(positional.dtype)
    if not torch.equal(rebuilt, positional):  # then it cannot be left out
        raise ValueError(f"{source}: {POSITIONAL} is not the fixed sinusoids; the subset would not reproduce it")
    buffer = io.BytesIO()
    torch.save({"dims": checkpoint["dims"], "model_state_dict": encoder}, buffer)
    recipe = {"key": POSITIONAL, "shape": list(positional.shape), "dtype": str(positional.dtype).removeprefix("torch."),
              "sha256": hashlib.sha256(positional.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()}
    return buffer.getvalue(), recipe


def _rebuild_whisper(packed: bytes, recipe: dict) -> bytes:
    import hashlib

    import torch

    from engine.audio.checkpoint import sinusoids

    checkpoint = torch.load(io.BytesIO(packed), map_location="cpu", weights_only=True)
    positional = sinusoids(*recipe["shape"]).to(getattr(torch, recipe["dtype"]))
    digest = hashlib.sha256(positional.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    if digest != recipe["sha256"]:
        raise ValueError(f"golden subset: the recomputed {recipe['key']} differs from the original (SHA-256)")
    checkpoint["model_state_dict"][recipe["key"]] = positional
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def write(golden: Path, archive: Path) -> Path:
    """Write the subset of `golden` (a golden/ folder) to `archive`; ValueError if it grew past MAX_BYTES."""
    if not golden.is_dir():
        raise FileNotFoundError(f"golden fixtures: expected a folder at {golden}, found nothing")
    files = {name: _safetensors(golden / name, keep) for name, keep in SAFETENSORS.items()}
    files.update({name: _npz(golden / name, keep) for name, keep in NPZ.items()})
    files[WHISPER_PACKED], recipe = _whisper_encoder(golden / WHISPER)
    files[WHISPER_PACKED + ".json"] = json.dumps(recipe).encode()
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zf:  # LZMA: fp16 weights, 6 % smaller
        zf.writestr(SUBSET_MARK, __doc__)
        for name, data in sorted(files.items()):
            zf.writestr(f"golden/{name}", data)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise ValueError(f"golden subset: expected at most {MAX_BYTES} bytes, found {size}")
    tmp.replace(archive)
    return archive


def extract(archive: Path, shared: Path) -> Path:
    """Unpack into `shared` (so that `shared/golden/...` exists); returns `shared`."""
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():  # our own archive, but never write outside `shared`
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"{archive}: unexpected member {name!r}")
            if name.endswith("/"):
                continue
            if not name.startswith(f"golden/{WHISPER_PACKED}"):
                target = shared / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
        recipe = json.loads(zf.read(f"golden/{WHISPER_PACKED}.json"))
        whisper = shared / "golden" / WHISPER
        whisper.parent.mkdir(parents=True, exist_ok=True)
        whisper.write_bytes(_rebuild_whisper(zf.read(f"golden/{WHISPER_PACKED}"), recipe))
    return shared
