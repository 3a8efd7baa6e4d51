"""Prepared avatars: a source video aligned and VAE-encoded once, looped forever by streaming sessions.

Layout of an avatar directory (written to a temporary sibling and renamed on success):
  manifest.json     model, resolution, face source, frame count and size, VAE fingerprint, dtype, version
  frames.raw        uint8 [T,H,W,3]  original frames (memory-mapped when read)
  faces.raw         uint8 [T,R,R,3]  aligned faces at the model resolution
  posterior.raw     float32 [T,4,4,h,w]  (masked mean, masked std, reference mean, reference std), unscaled
  matrices.npy      float32 [T,2,3]  frame -> crop affine (NaN where no face)
Sampling from the stored posterior (mean + std·ε, ε from the session's generator
in the official order) keeps the run faithful without re-encoding any frame.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import InvalidInputError, NoFaceError, expect
from engine.pipeline.frames import pingpong_index
from engine.pipeline.source import Cursor, SourceItem

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ENCODE_BATCH = 16


@dataclass(frozen=True)
class AvatarManifest:
    model: str
    resolution: int
    face_source: str
    num_frames: int
    height: int
    width: int
    latent_size: int
    vae_fingerprint: str = ""  # the posteriors are only valid for the VAE that made them
    dtype: str = "float32"  # dtype the VAE encoded in
    format_version: int = FORMAT_VERSION
    engine_version: str = ""
    created_unix: float = 0.0


def check_new_avatar_dir(out_dir: str | Path) -> Path:
    """An avatar is written only into a new or empty directory (never over another one)."""
    out_dir = Path(out_dir)
    expect(not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())), InvalidInputError,
           "avatar output", "a new or empty directory", f"{out_dir} with files")
    return out_dir


def prepare_avatar(sync, video, out_dir: str | Path, *, face=None, progress=None) -> "Avatar":
    """Decode `video`, align every frame, and store faces, matrices and VAE posteriors in `out_dir`.

    Streams: frames, faces and posteriors are appended to raw files as they are
    made (batches of 16), so memory stays flat in the video length.
    """
    import engine
    from engine.pipeline.faces import make_landmark_source
    from engine.pipeline.source import SourceCursor

    out_dir = check_new_avatar_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    frames, _, estimate = sync._open_video(video)
    core = sync.core
    face_spec = face if face is not None else sync.face
    cursor = SourceCursor(frames, make_landmark_source(face_spec, core.resolution), core.new_aligner(),
                          keep_frames=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writer = _AvatarWriter(tmp, core)
        for item in cursor:  # one forward pass (keep_frames=False ends it when the frames run out)
            writer.add(item)
            if progress:
                progress(writer.count, estimate or 0)
        writer.finish()
        if writer.count == 0:
            raise InvalidInputError("avatar video: expected at least one frame, found none")
        if writer.faces == 0:
            raise NoFaceError(f"avatar video: expected a face in at least one frame, found none in {writer.count}")
        manifest = AvatarManifest(
            model=getattr(sync.models, "name", "?"), resolution=core.resolution, face_source=_describe(face_spec),
            num_frames=writer.count, height=writer.size[0], width=writer.size[1], latent_size=core.latent_size,
            vae_fingerprint=vae_fingerprint(core.vae), dtype=str(core.dtype).removeprefix("torch."),
            engine_version=engine.__version__, created_unix=time.time(),
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cursor.close()
    return Avatar(out_dir)


def _describe(face_spec) -> str:
    return face_spec if isinstance(face_spec, str) else type(face_spec).__name__


def vae_fingerprint(vae) -> str:
    """A short hash of the VAE encoder's first and last weights: avatars made with another VAE are refused."""
    params = list(vae.encoder.parameters())
    quant = getattr(vae, "quant_conv", None)
    tensors = [params[0], params[-1]] + ([quant.weight] if quant is not None else [])
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _AvatarWriter:
    """Appends frames, faces, matrices and posteriors (VAE-encoded in batches) to raw files."""

    def __init__(self, root: Path, core) -> None:
        self.root, self.core = root, core
        self.files = {name: open(root / f"{name}.raw", "wb") for name in ("frames", "faces", "posterior")}
        self.matrices: list[np.ndarray] = []
        self.pending: list[SourceItem] = []
        self.count = self.faces = 0
        self.size: tuple[int, int] | None = None

    def add(self, item: SourceItem) -> None:
        if self.size is None:
            self.size = item.frame.shape[:2]
        elif item.frame.shape[:2] != self.size:
            raise InvalidInputError(f"avatar frame {item.source_index}: expected size {self.size}, found "
                                    f"{item.frame.shape[:2]}")
        self.files["frames"].write(np.ascontiguousarray(item.frame).tobytes())
        self.matrices.append(item.matrix if item.has_face else np.full((2, 3), np.nan, np.float32))
        self.count += 1
        self.pending.append(item)
        if len(self.pending) == ENCODE_BATCH:
            self._flush()

    def _flush(self) -> None:
        from engine.face.mask import prepare_masks_and_masked_images
        from engine.models.vae import vae_posterior

        core, r, hl = self.core, self.core.resolution, self.core.latent_size
        with_face = [i for i in self.pending if i.has_face]
        posterior = np.full((len(self.pending), 4, 4, hl, hl), np.nan, np.float32)
        faces = np.full((len(self.pending), r, r, 3), 127, np.uint8)
        if with_face:
            pixel, masked, _ = prepare_masks_and_masked_images(np.stack([i.face for i in with_face]))
            with torch.inference_mode():
                mm, ms = vae_posterior(core.vae, masked.to(core.device, core.dtype))
                rm, rs = vae_posterior(core.vae, pixel.to(core.device, core.dtype))
            stacked = torch.stack([mm, ms, rm, rs], dim=1).float().cpu().numpy()  # [b,4,4,h,w]
            rows = [k for k, i in enumerate(self.pending) if i.has_face]
            posterior[rows] = stacked
            faces[rows] = np.stack([i.face for i in with_face])
            self.faces += len(with_face)
        self.files["faces"].write(faces.tobytes())
        self.files["posterior"].write(posterior.tobytes())
        self.pending = []

    def finish(self) -> None:
        if self.pending:
            self._flush()
        for f in self.files.values():
            f.close()
        np.save(self.root / "matrices.npy", np.stack(self.matrices) if self.matrices else np.zeros((0, 2, 3)))


class Avatar:
    """A prepared avatar, memory-mapped: O(1) RAM in the number of frames."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise InvalidInputError(f"avatar: expected {manifest_path} (run `engine avatar prepare`), found none")
        try:
            data = json.loads(manifest_path.read_text())
            version = data.get("format_version")
        except (ValueError, AttributeError) as exc:
            raise InvalidInputError(f"avatar manifest {manifest_path}: expected a JSON object, found {exc}") from exc
        expect(version == FORMAT_VERSION, InvalidInputError, "avatar format version", FORMAT_VERSION, version)
        try:
            self.manifest = AvatarManifest(**data)
        except TypeError as exc:
            raise InvalidInputError(f"avatar manifest {manifest_path}: expected the fields of "
                                    f"{sorted(AvatarManifest.__dataclass_fields__)}, found {sorted(data)}") from exc
        m = self.manifest
        t, r, hl = m.num_frames, m.resolution, m.latent_size
        self.frames = self._raw("frames", np.uint8, (t, m.height, m.width, 3))
        self.faces = self._raw("faces", np.uint8, (t, r, r, 3))
        self.posterior = self._raw("posterior", np.float32, (t, 4, 4, hl, hl))
        self.matrices = np.load(self.path / "matrices.npy")
        for name, array in (("frames", self.frames), ("faces", self.faces), ("matrices", self.matrices),
                            ("posterior", self.posterior)):
            if len(array) != t:
                raise InvalidInputError(f"avatar {name}: expected {t} frames, found {len(array)}")

    def _raw(self, name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        path = self.path / f"{name}.raw"
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        found = path.stat().st_size if path.is_file() else None
        if found != expected:
            raise InvalidInputError(f"avatar {path.name}: expected {expected} bytes for {shape}, found {found}")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def check_compatible(self, core, model: str) -> None:
        """Refuse an avatar prepared for another resolution or VAE (its latents would be wrong)."""
        m = self.manifest
        expect(m.resolution == core.resolution, InvalidInputError, "avatar resolution",
               f"{core.resolution} (model {model})", f"{m.resolution} (prepared with {m.model})")
        found = vae_fingerprint(core.vae)
        expect(not m.vae_fingerprint or m.vae_fingerprint == found, InvalidInputError, "avatar VAE fingerprint",
               f"{found} (model {model})", f"{m.vae_fingerprint} (prepared with {m.model})")

    def __len__(self) -> int:
        return self.manifest.num_frames

    def item(self, s: int) -> SourceItem:
        matrix = self.matrices[s]
        if np.isnan(matrix).any():
            return SourceItem(s, np.asarray(self.frames[s]), None)
        p = torch.from_numpy(np.array(self.posterior[s]))  # [4,4,h,w]
        return SourceItem(s, np.asarray(self.frames[s]), matrix.copy(), np.asarray(self.faces[s]),
                          posterior=((p[0], p[1]), (p[2], p[3])))


class AvatarCursor(Cursor):
    """The avatar's frames in the official ping-pong order, forever."""

    def __init__(self, avatar: Avatar, aligner=None) -> None:
        self.avatar = avatar
        self.num_source = len(avatar)
        self.position = 0

    def __next__(self) -> SourceItem:
        item = self.avatar.item(pingpong_index(self.position, self.num_source))
        self.position += 1
        return item
