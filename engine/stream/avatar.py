"""Prepared avatars: a source video aligned and VAE-encoded once, looped forever by streaming sessions.

Layout of an avatar directory (format 2; written to a temporary sibling and renamed on success):
  manifest.json   model, resolution, face source used, frame count and size, VAE fingerprint, dtype,
                  the source file's sha256 (provenance), format version
  frames.mkv      the frames, H.264 RGB (see `avatar_frames`): lossless by default (decoded frames equal the
                  source's), or visually lossless at a chosen crf (about 4x smaller)
  faces.mkv       the aligned faces [R,R,3] (gray where no face), stored the same way
  posterior.bin   [T,4,4,h,w] in the VAE dtype (masked mean, masked std, reference mean, reference std),
                  unscaled; NaN where no face
  matrices.npy    float32 [T,2,3] frame -> crop affine (NaN where no face)
  frames_crc32.npy, faces_crc32.npy  uint32 [T] CRC-32 of each stored frame's compressed bytes (checked
                  before decoding)
The faces could be re-warped from frame and matrix, but that warp reads the whole
frame (about 0.2 s per 1080p frame on a loaded 2-core CPU) while decoding the stored
lossless face is a few ms, and a real-time session needs one per frame.
Sampling from the stored posterior (mean + std·ε, ε from the session's generator in
the official order) keeps the run faithful without re-encoding any frame.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import InvalidInputError, NoFaceError, expect
from engine.pipeline.frames import pingpong_index
from engine.pipeline.source import Cursor, SourceItem
from engine.stream.avatar_frames import (FrameFileReader, FrameFileWriter, describe_coding, packet_checksums,
                                         x264_options)

MANIFEST = "manifest.json"
FRAMES = "frames.mkv"
FACES = "faces.mkv"
POSTERIOR = "posterior.bin"
MATRICES = "matrices.npy"
CHECKSUMS = {FRAMES: "frames_crc32.npy", FACES: "faces_crc32.npy"}
NO_FACE_FILL = 127  # what is stored as the face of a frame without one (never read)
FORMAT_VERSION = 2
ENCODE_BATCH = 16
# posterior storage: the VAE's own dtype, so nothing is rounded (bfloat16 kept as its 16 raw bits in int16)
POSTERIOR_DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
                    "bfloat16": (np.int16, torch.bfloat16)}


@dataclass(frozen=True)
class AvatarManifest:
    model: str
    resolution: int
    face_source: str  # the face source actually used ("mediapipe", "insightface", "trackfile:PATH", ...)
    num_frames: int
    height: int
    width: int
    latent_size: int
    vae_fingerprint: str = ""  # the posteriors are only valid for the VAE that made them
    dtype: str = "float32"  # dtype the VAE encoded in, and the posterior is stored in
    format_version: int = FORMAT_VERSION
    engine_version: str = ""
    created_unix: float = 0.0
    face_source_requested: str = ""  # what was asked for ("auto", ...)
    frames_codec: str = describe_coding(None)
    frames_crf: int | None = None  # None: lossless (frames equal the source's), else x264 constant quality
    frames_bytes: int = 0
    faces_bytes: int = 0
    source: dict = field(default_factory=dict)  # {"path", "bytes", "sha256"} of a source file, else {}


def check_new_avatar_dir(out_dir: str | Path) -> Path:
    """An avatar is written only into a new or empty directory (never over another one)."""
    out_dir = Path(out_dir)
    expect(not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())), InvalidInputError,
           "avatar output", "a new or empty directory", f"{out_dir} with files")
    return out_dir


def prepare_avatar(sync, video, out_dir: str | Path, *, face=None, progress=None,
                   frames_crf: int | None = None) -> "Avatar":
    """Decode `video`, align every frame, and store frames, matrices and VAE posteriors in `out_dir`.

    `frames_crf`: None stores frames and faces losslessly; a number stores them at that x264
    constant quality (12 is visually lossless: PSNR about 48 dB on the demo clips), which is
    about 4x smaller than lossless on the demo clips and no longer bit-exact.

    Streams: frames and posteriors are appended to their files as they are made
    (batches of 16), so memory stays flat in the video length. `progress(done, total)`
    is called per frame (total: the frame count, or its estimate, 0 if unknown).
    """
    import engine
    from engine.pipeline.faces import make_landmark_source
    from engine.pipeline.source import SourceCursor

    out_dir = check_new_avatar_dir(out_dir)
    x264_options(frames_crf)  # a bad crf is refused before any work
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    frames, _, estimate = sync._open_video(video)
    core = sync.core
    face_spec = face if face is not None else sync.face
    faces = make_landmark_source(face_spec, core.resolution)
    cursor = SourceCursor(frames, faces, core.new_aligner(), keep_frames=False)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writer = _AvatarWriter(tmp, core, frames_crf)
        try:
            for item in cursor:  # one forward pass (keep_frames=False ends it when the frames run out)
                writer.add(item)
                if progress:
                    progress(writer.count, max(estimate or 0, writer.count))
            writer.finish()
        finally:
            writer.close()
        if writer.count == 0:
            raise InvalidInputError("avatar video: expected at least one frame, found none")
        if writer.faces == 0:
            raise NoFaceError(f"avatar video: expected a face in at least one frame, found none in {writer.count}")
        manifest = AvatarManifest(
            model=getattr(sync.models, "name", "?"), resolution=core.resolution,
            face_source=describe_face_source(faces, face_spec), face_source_requested=_describe_spec(face_spec),
            num_frames=writer.count, height=writer.size[0], width=writer.size[1], latent_size=core.latent_size,
            vae_fingerprint=vae_fingerprint(core.vae), dtype=writer.dtype,
            engine_version=engine.__version__, created_unix=time.time(),
            frames_codec=describe_coding(frames_crf), frames_crf=frames_crf,
            frames_bytes=(tmp / FRAMES).stat().st_size, faces_bytes=(tmp / FACES).stat().st_size,
            source=_source_record(video),
        )
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cursor.close()
    return Avatar(out_dir)


def describe_face_source(faces, spec=None) -> str:
    """The face source a landmark source really uses: the detector behind its tracker ("auto" resolved),
    with the track file's path for a track file; "landmarks array" or the class name otherwise."""
    from engine.pipeline.faces import LandmarkArraySource

    if isinstance(faces, LandmarkArraySource):
        return "landmarks array"
    detector = getattr(getattr(faces, "tracker", None), "source", None)
    if detector is None:
        return type(faces).__name__
    name = getattr(detector, "name", type(detector).__name__)
    if name == "trackfile" and isinstance(spec, (str, Path)):
        return f"trackfile:{Path(spec).resolve()}"
    return name


def _describe_spec(face_spec) -> str:
    return face_spec if isinstance(face_spec, str) else type(face_spec).__name__


def _source_record(video) -> dict:
    """Provenance of a source file: where it was and its content hash (a changed file shows up as another hash)."""
    if not isinstance(video, (str, Path)):
        return {}
    from engine.weights import sha256_file

    path = Path(video).resolve()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def vae_fingerprint(vae) -> str:
    """A short hash of the VAE encoder's first and last weights: avatars made with another VAE are refused."""
    params = list(vae.encoder.parameters())
    quant = getattr(vae, "quant_conv", None)
    tensors = [params[0], params[-1]] + ([quant.weight] if quant is not None else [])
    digest = hashlib.sha256()
    if any(t.is_meta for t in tensors):  # a modelled run's VAE has no weights: its shapes are all there is
        digest.update(repr([(tuple(t.shape), str(t.dtype)) for t in tensors]).encode())
        return "meta-" + digest.hexdigest()[:11]
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _posterior_bits(t: torch.Tensor) -> np.ndarray:
    """A posterior tensor as numpy without rounding (bfloat16 as its raw bits, int16)."""
    t = t.detach().cpu().contiguous()
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


class _AvatarWriter:
    """Appends frames and faces (H.264 RGB), matrices and posteriors (VAE-encoded in batches of 16) to their files."""

    def __init__(self, root: Path, core, crf: int | None) -> None:
        self.root, self.core = root, core
        self.frames = FrameFileWriter(root / FRAMES, crf=crf)
        self.face_crops = FrameFileWriter(root / FACES, crf=crf)
        self.posterior = open(root / POSTERIOR, "wb")
        self.matrices: list[np.ndarray] = []
        self.pending: list[SourceItem] = []
        self.count = self.faces = 0
        self.dtype: str | None = None  # the VAE's output dtype, known after the first batch with a face

    @property
    def size(self) -> tuple[int, int] | None:
        return self.frames.size

    def add(self, item: SourceItem) -> None:
        if self.size is not None and item.frame.shape[:2] != self.size:
            raise InvalidInputError(f"avatar frame {item.source_index}: expected size {self.size}, found "
                                    f"{item.frame.shape[:2]}")
        self.frames.write(item.frame)
        r = self.core.resolution
        self.face_crops.write(item.face if item.has_face else np.full((r, r, 3), NO_FACE_FILL, np.uint8))
        self.matrices.append(item.matrix if item.has_face else np.full((2, 3), np.nan, np.float32))
        self.count += 1
        self.pending.append(item)
        if len(self.pending) == ENCODE_BATCH:
            self._flush()

    def _flush(self) -> None:
        from engine.face.mask import prepare_masks_and_masked_images

        core, hl = self.core, self.core.latent_size
        with_face = [i for i in self.pending if i.has_face]
        stacked = None
        if with_face:
            pixel, masked, _ = prepare_masks_and_masked_images(np.stack([i.face for i in with_face]))
            with torch.inference_mode():  # the VAE runs on the engine core's device thread, like every network
                mm, ms = core.vae_posterior(masked.to(core.device, core.dtype))
                rm, rs = core.vae_posterior(pixel.to(core.device, core.dtype))
            stacked = torch.stack([mm, ms, rm, rs], dim=1)  # [b,4,4,h,w] in the VAE dtype
            self.faces += len(with_face)
        if self.dtype is None:  # fixed by the first batch; float32 holds any VAE dtype exactly
            self.dtype = "float32" if stacked is None else str(stacked.dtype).removeprefix("torch.")
        np_dtype, torch_dtype = POSTERIOR_DTYPES[self.dtype]
        posterior = torch.full((len(self.pending), 4, 4, hl, hl), float("nan"), dtype=torch_dtype)
        if stacked is not None:
            rows = [k for k, i in enumerate(self.pending) if i.has_face]
            posterior[rows] = stacked.to("cpu", torch_dtype)
        self.posterior.write(_posterior_bits(posterior).astype(np_dtype, copy=False).tobytes())
        self.pending = []

    def finish(self) -> None:
        """Encode what is pending and write the matrices (after the last frame)."""
        if self.pending:
            self._flush()
        self.dtype = self.dtype or "float32"
        self.frames.close()
        self.face_crops.close()
        if self.count:
            for name, checksums in CHECKSUMS.items():
                np.save(self.root / checksums, packet_checksums(self.root / name, self.count))
        matrices = np.stack(self.matrices).astype(np.float32) if self.matrices else np.zeros((0, 2, 3), np.float32)
        np.save(self.root / MATRICES, matrices)

    def close(self) -> None:
        """Close the files (also after a failure; the temporary directory is then removed)."""
        try:
            self.frames.close()
            self.face_crops.close()
        finally:
            self.posterior.close()


class Avatar:
    """A prepared avatar: the manifest, memory-mapped posteriors and matrices (O(1) RAM in the frame count).

    Frames are decoded by each cursor (`AvatarCursor`), so one Avatar serves many sessions.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        m = self.manifest
        t, hl = m.num_frames, m.latent_size
        self._posterior_dtype = POSTERIOR_DTYPES[m.dtype][1]
        self.posterior = self._raw(POSTERIOR, POSTERIOR_DTYPES[m.dtype][0], (t, 4, 4, hl, hl))
        self.matrices = self._array(MATRICES, np.float32, (t, 2, 3))
        self.checksums = {name: self._array(file, np.uint32, (t,)) for name, file in CHECKSUMS.items()}
        for name, size in ((FRAMES, m.frames_bytes), (FACES, m.faces_bytes)):
            found = (self.path / name).stat().st_size if (self.path / name).is_file() else None
            expect(found == size, InvalidInputError, f"avatar {name}", f"{size} bytes", found)

    def _raw(self, name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        path = self.path / name
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        found = path.stat().st_size if path.is_file() else None
        if found != expected:
            raise InvalidInputError(f"avatar {path.name}: expected {expected} bytes for {shape}, found {found}")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def _array(self, name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        what = f"{np.dtype(dtype).name} {list(shape)}"
        try:
            array = np.load(self.path / name)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"avatar {name}: expected {what}, found {type(exc).__name__}: {exc}") from exc
        found = f"{array.dtype.name} {list(array.shape)}"
        expect(array.shape == shape and array.dtype == dtype, InvalidInputError, f"avatar {name}", what, found)
        return array

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

    def open_frames(self) -> tuple[FrameFileReader, FrameFileReader]:
        """Readers of the avatar's (frames, faces); one pair per session: each holds a decoder."""
        m = self.manifest
        r = m.resolution
        return (FrameFileReader(self.path / FRAMES, m.num_frames, (m.height, m.width), self.checksums[FRAMES]),
                FrameFileReader(self.path / FACES, m.num_frames, (r, r), self.checksums[FACES]))

    def posterior_of(self, s: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((masked mean, std), (reference mean, std)) of frame s, each [4,h,w] in the VAE dtype."""
        p = torch.from_numpy(np.array(self.posterior[s])).view(self._posterior_dtype)  # [4,4,h,w]
        return (p[0], p[1]), (p[2], p[3])


def _read_manifest(path: Path) -> AvatarManifest:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InvalidInputError(f"avatar: expected {manifest_path} (run `engine avatar prepare`), found none")
    try:
        data = json.loads(manifest_path.read_text())
        version = data.get("format_version")
    except (ValueError, AttributeError) as exc:
        raise InvalidInputError(f"avatar manifest {manifest_path}: expected a JSON object, found {exc}") from exc
    if version != FORMAT_VERSION:
        older = " (an avatar from an older engine; prepare it again with `engine avatar prepare`)" \
            if isinstance(version, int) and version < FORMAT_VERSION else ""
        raise InvalidInputError(f"avatar format version: expected {FORMAT_VERSION}, found {version!r}{older}")
    try:
        manifest = AvatarManifest(**data)
    except TypeError as exc:
        raise InvalidInputError(f"avatar manifest {manifest_path}: expected the fields of "
                                f"{sorted(AvatarManifest.__dataclass_fields__)}, found {sorted(data)}") from exc
    expect(manifest.dtype in POSTERIOR_DTYPES, InvalidInputError, "avatar dtype", f"one of {sorted(POSTERIOR_DTYPES)}",
           manifest.dtype)
    return manifest


class AvatarCursor(Cursor):
    """The avatar's frames in the official ping-pong order, forever."""

    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        self.num_source = len(avatar)
        self.position = 0
        self._frames, self._faces = avatar.open_frames()

    def __next__(self) -> SourceItem:
        s = pingpong_index(self.position, self.num_source)
        self.position += 1
        frame = self._frames.get(s)
        matrix = self.avatar.matrices[s]
        if np.isnan(matrix).any():
            return SourceItem(s, frame, None)
        return SourceItem(s, frame, matrix.copy(), self._faces.get(s), posterior=self.avatar.posterior_of(s))

    def close(self) -> None:
        self._frames.close()
        self._faces.close()
