"""The one way this engine touches the network: hash-checked downloads that honour offline mode.

Every download (hub checkpoints, evaluator weights, face-model archives, `pip download`) goes
through this module, so one switch turns the network off for everything: `offline=True` on a call,
`set_offline(True)` for the process (what the CLI's `--offline` does), or the environment
(`LATENTSYNC_ENGINE_OFFLINE=1` or `HF_HUB_OFFLINE=1`). In offline mode no socket is opened: a
missing file is a DownloadError naming it. Online, a host that does not resolve fails at once
(one DNS lookup, bounded) instead of after the hub client's ~40 s of retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from engine.errors import CheckpointError, DownloadError

log = logging.getLogger(__name__)

OFFLINE_ENVS = ("LATENTSYNC_ENGINE_OFFLINE", "HF_HUB_OFFLINE")
TRUE_VALUES = ("1", "true", "yes", "on")
PROXY_ENVS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
DNS_TIMEOUT_S = 5.0  # one bounded lookup before any download
DOWNLOAD_TIMEOUT_S = 60  # socket timeout per request
HASH_CHUNK_BYTES = 1 << 22
DEFAULT_HUB = "https://huggingface.co"
NO_HUB_ADVICE = ("use --model tiny-random (random weights, to try the pipeline), or --model DIR with a local "
                 "folder holding the files (see docs/install.md: model files)")

_offline_process = False
_resolved: set[str] = set()  # hosts that resolved once in this process
_hub_logging_fixed = False


def set_offline(on: bool = True) -> None:
    """Turn offline mode on (or off) for the whole process: no fetch helper opens a socket while it is on."""
    global _offline_process
    _offline_process = bool(on)


@contextlib.contextmanager
def offline_mode(on: bool = True) -> Iterator[None]:
    """Offline mode for the duration of a block (one CLI command), restored after."""
    global _offline_process
    previous = _offline_process
    _offline_process = previous or bool(on)
    try:
        yield
    finally:
        _offline_process = previous


def is_offline(offline: bool = False) -> bool:
    """True when this call, the process (set_offline) or the environment asks for no network."""
    if offline or _offline_process:
        return True
    return any(os.environ.get(name, "").strip().lower() in TRUE_VALUES for name in OFFLINE_ENVS)


def offline_reason(offline: bool = False) -> str:
    if offline or _offline_process:
        return "offline mode is on (--offline / offline=True)"
    names = [n for n in OFFLINE_ENVS if os.environ.get(n, "").strip().lower() in TRUE_VALUES]
    return f"offline mode is on ({' / '.join(names)})"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (the one implementation every cache uses)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, *, what: str = "") -> Path:
    """`path` when its bytes hash to `expected`, else CheckpointError naming file, expected and found."""
    found = sha256_file(path)
    if found != expected.lower():
        prefix = f"{what} " if what else ""
        raise CheckpointError(f"{prefix}{path}: expected sha256 {expected}, found {found} (corrupt or wrong file)")
    return Path(path)


def require_online(what: str, offline: bool = False) -> None:
    """DownloadError before any socket when offline mode is on."""
    if is_offline(offline):
        raise DownloadError(f"{what}: expected a cached copy because {offline_reason(offline)}, found nothing; "
                            "run once without offline mode, or give the file's local path")


def _uses_proxy() -> bool:
    return any(os.environ.get(name) for name in PROXY_ENVS)


def check_host(host: str | None, what: str, *, timeout_s: float = DNS_TIMEOUT_S) -> None:
    """DownloadError at once when `host` cannot be resolved (no network, no DNS); skipped behind a proxy."""
    if not host or host in _resolved or _uses_proxy():
        return
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lookup, name=f"dns-{host}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise DownloadError(f"{what}: expected {host} to resolve, found no answer in {timeout_s:g} s (no network?)")
    if outcome[0] is not None:
        raise DownloadError(f"{what}: expected {host} to resolve, found {outcome[0]} (no network or DNS?)")
    _resolved.add(host)


def open_url(url: str, *, what: str | None = None, headers: dict[str, str] | None = None,
             offline: bool = False, timeout_s: float = DOWNLOAD_TIMEOUT_S):
    """urllib response for `url` (http/https), after the offline and DNS checks; the only urlopen in the engine."""
    what = what or url
    require_online(what, offline)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"{what}: expected an http(s) URL, found {url!r}")
    check_host(urllib.parse.urlsplit(url).hostname, what)
    request = urllib.request.Request(url, headers=headers or {})
    return urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 - http(s) only, checked above


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_HUB).rstrip("/")


def quiet_hub_logging() -> None:
    """Let huggingface_hub's warnings reach the root handler once (the library installs a second handler)."""
    global _hub_logging_fixed
    if _hub_logging_fixed:
        return
    hub_logger = logging.getLogger("huggingface_hub")
    if logging.getLogger().handlers:  # the application configured logging: drop the library's own copy
        for handler in list(hub_logger.handlers):
            hub_logger.removeHandler(handler)
    _hub_logging_fixed = True


def hub_file(repo: str, filename: str, *, revision: str | None = None, offline: bool = False,
             cache_dir: str | os.PathLike | None = None, advice: str = NO_HUB_ADVICE) -> Path:
    """Path of `filename` of hub repo `repo` in the Hugging Face cache, downloading it unless offline.

    Offline: the cache only, no socket. Online with an unreachable hub: the cached copy when there is
    one, else a DownloadError at once that says what to do instead (`advice`: a local folder, tiny-random for the
    pipeline's models; callers whose files tiny-random does not replace pass their own).
    """
    import huggingface_hub.utils.logging  # noqa: F401 - installs the library handler before we remove it
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    quiet_hub_logging()
    off = is_offline(offline)
    where = f"{repo}/{filename}" + (f"@{revision}" if revision else "")
    cache = cache_dir or "the default Hugging Face cache"

    def cached_only(why: str) -> Path:
        # try_to_load_from_cache reads the cache folders only; hf_hub_download(local_files_only=True) would
        # still build request headers, which fetches the hub's agent registry (a network access).
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
        raise DownloadError(f"{where}: expected it in {cache} because {why}, found nothing; {advice}, "
                            "or download it once online")

    if off:
        return cached_only(offline_reason(offline))
    try:
        check_host(urllib.parse.urlsplit(hub_endpoint()).hostname, where)
    except DownloadError as exc:
        return cached_only(f"the hub is unreachable ({str(exc).split(': ', 1)[-1]})")
    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError as exc:
        raise DownloadError(f"{where}: expected it in {cache} because the hub could not be reached, found nothing; "
                            f"{advice}") from exc
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise DownloadError(f"{where}: expected a file on the hub, found none ({exc})") from exc
    except HfHubHTTPError as exc:
        raise DownloadError(f"{where}: download failed ({exc}); {advice}") from exc


def hub_sha256(repo: str, filename: str, *, offline: bool = False) -> str | None:
    """The sha256 the hub declares for an LFS file (its etag), or None when unknown or offline."""
    if is_offline(offline):
        return None
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        check_host(urllib.parse.urlsplit(hub_endpoint()).hostname, f"{repo}/{filename}")
        etag = (get_hf_file_metadata(hf_hub_url(repo, filename)).etag or "").strip('"')
    except Exception:  # noqa: BLE001 - metadata is a second opinion; the recorded hash still guards the cache
        return None
    return etag if len(etag) == 64 else None


def checked_or_recorded(path: Path, pinned: str | None, *, what: str, second_opinion=None) -> Path:
    """Check `path` against a pinned hash, or the hash recorded beside it on first use (`<file>.sha256`).

    Files whose hash we cannot pin in the code (hub files not yet published with a hash) are trusted
    on first use and recorded, so a later corruption of the cached file is found, offline too.
    `second_opinion()` may give the hash the server declares when nothing is pinned or recorded.
    """
    record = path.with_name(path.name + ".sha256")
    expected = pinned or (record.read_text().strip() if record.exists() else None)
    if expected is None and second_opinion is not None:
        expected = second_opinion()
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise CheckpointError(f"{what} {path}: expected sha256 {expected}, found {actual}")
    if expected is None:
        log.warning("%s: no known sha256; recording %s for later checks", what, actual)
    if not record.exists():
        try:
            record.write_text(actual + "\n")
        except OSError:  # read-only cache: the check above already ran
            pass
    return path
