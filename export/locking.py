"""Cross-process file locks and atomic writes, so racing builds never expose a half-written file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from engine.errors import EngineError

log = logging.getLogger(__name__)
LOCK_POLL_S = 0.2  # how often a waiting process retries a held lock
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it) and restored at once
os.umask(_UMASK)


def lock_path(target: Path) -> Path:
    """The lock file guarding `target` (beside it, so it lives on the same filesystem)."""
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def file_lock(target: Path, *, timeout_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `target`'s lock file; waits (logging once) while another process has it.

    The holder deletes the lock file before releasing it, so no `.lock` files are left behind; a waiter that
    then wins the lock on the deleted file notices (the path no longer names its file) and locks afresh.
    """
    path = lock_path(Path(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if not waited:
                        log.info("waiting for %s (another process is writing %s)", path.name, Path(target).name)
                        waited = True
                    if timeout_s is not None and time.monotonic() - start > timeout_s:
                        raise EngineError(f"lock {path}: expected to acquire within {timeout_s:.0f} s, found it still held")
                    time.sleep(LOCK_POLL_S)
            if _names_same_file(path, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # we locked a file its holder had already deleted: lock the current one
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)  # closing the descriptor releases the lock


def _names_same_file(path: Path, fd: int) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def atomic_write(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a unique temporary file beside `target`, fsync it, then rename it onto `target`.

    On any failure the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result gets a normal file's mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    """Write `data` to `target` atomically."""
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
