"""Face model files: where they are cached, how they are fetched once, and the hashes that make them trusted."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError, DownloadError
from engine.weights.fetch import DOWNLOAD_TIMEOUT_S, is_offline, open_url, require_online, sha256_file, verify_sha256
from engine.weights.files import ENGINE_CACHE_ENV as CACHE_ENV, engine_cache_dir

sha256_of = sha256_file  # the name this module used to define; one implementation (engine.weights.fetch)

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 600
RANGE_BLOCK = 1 << 18  # bytes per HTTP range request when reading single members of a remote wheel


@dataclass(frozen=True)
class ModelFile:
    """One file we run, named by content: a cache-relative path and its SHA-256."""

    name: str  # cache-relative path
    sha256: str
    size: int | None = None
    also_at: tuple[str, ...] = ()  # other places a user may already have it (~ expanded; used if the hash matches)


@dataclass(frozen=True)
class Archive:
    """A zip (wheel) holding model files; members map archive path -> ModelFile."""

    urls: tuple[str, ...]
    sha256: str | None  # of the whole archive, checked when it is downloaded whole
    members: dict[str, ModelFile]
    license: str
    pip_args: tuple[str, ...] = ()  # last resort: `pip download <args>` (honours the user's pip index and proxy)


# mediapipe 0.10.21 (Apache-2.0): BlazeFace short range and the 468-point FaceMesh. The .tflite files are the
# same in every platform wheel; this one is pinned by its PyPI hash.
_MP_DIR = "mediapipe-0.10.21"
MEDIAPIPE_DETECTOR = ModelFile(f"{_MP_DIR}/face_detection_short_range.tflite",
                               "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229714)
MEDIAPIPE_MESH = ModelFile(f"{_MP_DIR}/face_landmark.tflite",
                           "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", 1242398)
MEDIAPIPE_WHEEL = Archive(
    urls=("https://files.pythonhosted.org/packages/ad/83/56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
          "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",),
    sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    members={"mediapipe/modules/face_detection/face_detection_short_range.tflite": MEDIAPIPE_DETECTOR,
             "mediapipe/modules/face_landmark/face_landmark.tflite": MEDIAPIPE_MESH},
    license="Apache-2.0 (mediapipe)",
    pip_args=("mediapipe==0.10.21", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
              "--platform", "manylinux_2_28_x86_64"),
)

# InsightFace buffalo_l (the official LatentSync detector): SCRFD-10GF and the 106-point landmark model.
# The pack's licence allows non-commercial research use only; it is fetched on first use, never bundled.
_BUFFALO_ELSEWHERE = ("~/.insightface/models/buffalo_l", "checkpoints/auxiliary/models/buffalo_l")  # insightface, LatentSync
INSIGHTFACE_DETECTOR = ModelFile("buffalo_l/det_10g.onnx",
                                 "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", 16923827,
                                 tuple(f"{d}/det_10g.onnx" for d in _BUFFALO_ELSEWHERE))
INSIGHTFACE_LANDMARK = ModelFile("buffalo_l/2d106det.onnx",
                                 "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", 5030888,
                                 tuple(f"{d}/2d106det.onnx" for d in _BUFFALO_ELSEWHERE))
INSIGHTFACE_PACK = Archive(
    urls=("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",),
    sha256=None,  # members are checked one by one
    members={"det_10g.onnx": INSIGHTFACE_DETECTOR, "2d106det.onnx": INSIGHTFACE_LANDMARK},
    license="InsightFace buffalo_l: non-commercial research use",
)


def cache_dir() -> Path:
    """Face-model cache: `models/` under the engine cache ($LATENTSYNC_ENGINE_CACHE or ~/.cache/latentsync-engine),
    beside the tiny-random weights and the engine records, wherever the cache root is."""
    return engine_cache_dir() / "models"


def verified(path: Path, model: ModelFile) -> Path:
    """Return `path` if it holds exactly `model`, else raise CheckpointError naming file, expected and found."""
    if not path.is_file():
        raise CheckpointError(f"{path}: expected the model file {model.name}, found nothing")
    return verify_sha256(path, model.sha256)


def cached(model: ModelFile, root: Path | None = None) -> Path | None:
    """The cached, hash-checked file (or a matching copy the user already has), None when absent.

    A cache file with a wrong hash raises; a copy elsewhere with a wrong hash is only skipped (it is not ours).
    """
    path = (root or cache_dir()) / model.name
    if path.exists():
        return verified(path, model)
    for other in model.also_at:
        candidate = Path(other).expanduser()
        if candidate.is_file():
            if sha256_file(candidate) == model.sha256:
                return candidate
            log.warning("%s: sha256 differs from %s %s; not used", candidate, model.name, model.sha256)
    return None


def ensure(model: ModelFile, archive: Archive, *, root: Path | None = None, offline: bool = False) -> Path:
    """The cached file for `model`, fetching `archive` members once (hash-checked) when missing."""
    root = root or cache_dir()
    path = cached(model, root)
    if path is not None:
        return path
    require_online(f"{root / model.name} ({archive.license})", offline)
    log.info("fetching %s from %s (%s)", model.name, archive.urls[0], archive.license)
    fetch_members(archive, root)
    return verified(root / model.name, model)


def fetch_members(archive: Archive, root: Path) -> None:
    """Extract every missing member of `archive` into `root`; each file is written atomically after its hash matches."""
    errors = []
    for url in archive.urls:
        try:
            with _open_zip(url, archive.sha256) as zf:
                _extract(zf, archive, root, url)
            return
        except DownloadError as exc:  # offline, or the host does not resolve: try the next way
            errors.append(f"{url}: {exc}")
        except CheckpointError:
            raise
        except (OSError, zipfile.BadZipFile, ValueError) as exc:  # network or format trouble: try the next way
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    if archive.pip_args and not is_offline():
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "pip", "download", *archive.pip_args, "-d", tmp, "--quiet"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode == 0 and len(wheels) == 1:
                with _open_zip(str(wheels[0]), archive.sha256) as zf:
                    _extract(zf, archive, root, str(wheels[0]))
                return
            errors.append(f"pip download {archive.pip_args[0]}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    raise CheckpointError(f"could not fetch {sorted(archive.members)}: " + " | ".join(errors))


def _extract(zf: zipfile.ZipFile, archive: Archive, root: Path, source: str) -> None:
    for member, model in archive.members.items():
        if (root / model.name).is_file():
            continue
        try:
            data = zf.read(member)
        except KeyError:
            raise CheckpointError(f"{source}: expected member {member}, found none") from None
        _write_checked(root / model.name, data, model, source=f"{source}!{member}")


def _write_checked(path: Path, data: bytes, model: ModelFile, *, source: str) -> None:
    found = hashlib.sha256(data).hexdigest()
    if found != model.sha256:
        raise CheckpointError(f"{source}: expected sha256 {model.sha256}, found {found}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".part", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _open_zip(url: str, sha256: str | None) -> zipfile.ZipFile:
    """A ZipFile over `url`: local paths / file:// read directly; http(s) read by range requests when allowed."""
    if url.startswith("file://") or "://" not in url:
        local = Path(urllib.request.url2pathname(url[len("file://"):]) if url.startswith("file://") else url)
        if sha256 is not None:
            verify_sha256(local, sha256)
        return zipfile.ZipFile(local)
    try:
        return zipfile.ZipFile(io.BufferedReader(_HttpRangeFile(url), buffer_size=RANGE_BLOCK))
    except _NoRanges:
        pass
    spool = tempfile.TemporaryFile()  # the whole archive, streamed to disk (buffalo_l is ~280 MB)
    digest = hashlib.sha256()
    with open_url(url, timeout_s=DOWNLOAD_TIMEOUT_S) as response:
        for block in iter(lambda: response.read(1 << 20), b""):
            digest.update(block)
            spool.write(block)
    if sha256 is not None and digest.hexdigest() != sha256:
        spool.close()
        raise CheckpointError(f"{url}: expected sha256 {sha256}, found {digest.hexdigest()}")
    spool.seek(0)
    return zipfile.ZipFile(spool)


class _NoRanges(OSError):
    pass


class _HttpRangeFile(io.RawIOBase):
    """A seekable read-only view of a remote file through HTTP range requests (members are hash-checked after)."""

    def __init__(self, url: str) -> None:
        self.url, self.pos = url, 0
        self.size = self._probe()

    def _get(self, start: int, stop: int):
        return open_url(self.url, headers={"Range": f"bytes={start}-{stop - 1}"}, timeout_s=DOWNLOAD_TIMEOUT_S)

    def _probe(self) -> int:
        with self._get(0, 1) as response:
            content_range = response.headers.get("Content-Range", "")
            if response.status != 206 or "/" not in content_range:
                raise _NoRanges(f"{self.url}: server ignores range requests")
            return int(content_range.rsplit("/", 1)[1])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        stop = min(self.pos + len(buffer), self.size)
        if stop <= self.pos:
            return 0
        with self._get(self.pos, stop) as response:
            data = response.read()
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n
