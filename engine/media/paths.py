"""Output paths checked before any work: never the user's input, always writable, and tidy after a kill.

Every front end (CLI, SDK, batch runner) calls `check_output` with its output and input paths at
the start of a job, so a mistake such as `--video X --output X` is refused in milliseconds instead
of replacing the user's source after minutes of work, and a missing or read-only directory is named
as such instead of surfacing as an encoder error after the first chunk.

Temporary files: writers put their output at `.<name>.<pid>-<host>-<hex>.partial` beside the target
and rename it on success. A process killed with SIGKILL cannot remove its file; the next job that
writes into that directory removes `.partial` files whose owner (same host, process id) is gone,
and never touches one whose process is alive.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from engine.errors import InvalidInputError, expect

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")  # what VideoWriter's mp4 muxer writes sensibly
WAV_SUFFIXES = (".wav",)
PARTIAL_SUFFIX = ".partial"
_PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-(?P<tag>[0-9a-f]{12})\.partial$")


def host_tag() -> str:
    """6 hex digits naming this machine, so a shared directory never mixes up two hosts' process ids."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def partial_path(target: Path) -> Path:
    """A unique hidden name beside `target` (same filesystem, so the final rename is atomic), naming its owner."""
    return target.with_name(f".{target.name}.{os.getpid()}-{host_tag()}-{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


def partial_owner(path: Path) -> tuple[int, str] | None:
    """(pid, host tag) of a writer's temporary file, None for any other name."""
    match = _PARTIAL_NAME.match(path.name)
    return (int(match["pid"]), match["host"]) if match else None


def process_alive(pid: int) -> bool:
    """True when a process with this id exists (another user's counts: it is alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(directory: str | os.PathLike) -> list[Path]:
    """Delete `.partial` files in `directory` left by dead processes of this host; return what was removed."""
    removed: list[Path] = []
    here = host_tag()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(PARTIAL_SUFFIX):
            continue
        owner = partial_owner(Path(entry.name))
        if owner is None or owner[1] != here or owner[0] == os.getpid() or process_alive(owner[0]):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) left in %s by killed jobs: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else by os.umask twice."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """The mode open()/mkdir() would give a new file or folder: 0o666 / 0o777 less the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name one file: the same path after resolving links, or the same inode (hard link)."""
    pa, pb = Path(os.fspath(a)).expanduser(), Path(os.fspath(b)).expanduser()
    if pa.resolve() == pb.resolve():
        return True
    ia, ib = _identity(pa), _identity(pb)
    return ia is not None and ia == ib


def inside(path: str | os.PathLike, directory: str | os.PathLike) -> bool:
    """True when `path` resolves to a location inside `directory` (or is it)."""
    p, d = Path(os.fspath(path)).expanduser().resolve(), Path(os.fspath(directory)).expanduser().resolve()
    return p == d or d in p.parents


def check_not_input(output: str | os.PathLike, inputs: Iterable[tuple[str, object]], *, what: str = "output",
                    directory: bool = False) -> None:
    """InvalidInputError when `output` is one of the inputs (or, for an output directory, holds one).

    `inputs` are (label, path) pairs, e.g. ("--video", "face.mp4"); non-path inputs (arrays) are skipped.
    """
    for label, source in inputs:
        if not isinstance(source, (str, os.PathLike)):
            continue
        if same_file(output, source):
            raise InvalidInputError(f"{what} {output}: expected a path that is not an input, found the same file "
                                    f"as {label} {source}; refusing to overwrite the input")
        if directory and Path(os.fspath(output)).expanduser().exists() and inside(source, output):
            raise InvalidInputError(f"{what} {output}: expected a directory that does not hold an input, found "
                                    f"{label} {source} inside it")


def check_writable_dir(directory: Path, what: str) -> None:
    """InvalidInputError unless a file can really be created in `directory` (read-only mounts, permissions)."""
    expect(directory.is_dir(), InvalidInputError, what, f"an existing output directory {directory}",
           "nothing there" if not directory.exists() else "a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=directory)
    except OSError as exc:
        why = {errno.EROFS: "a read-only filesystem", errno.EACCES: "no write permission",
               errno.EPERM: "no write permission", errno.ENOSPC: "no space left"}.get(exc.errno, str(exc))
        raise InvalidInputError(f"{what}: expected a writable directory {directory}, found {why} "
                                f"({exc.strerror})") from exc
    os.close(fd)
    os.unlink(probe)


def check_output(path: str | os.PathLike, *, inputs: Iterable[tuple[str, object]] = (),
                 suffixes: tuple[str, ...] | None = VIDEO_SUFFIXES, what: str = "output",
                 clean_stale: bool = True) -> Path:
    """The absolute output path, after every check a job can make before doing any work.

    Raises InvalidInputError (exit 2) when the output is an input, its directory does not exist or is
    not writable, the path is a directory, or its extension is not one we write. Also removes stale
    `.partial` files of killed jobs in that directory (see the module docstring).
    """
    expect(isinstance(path, (str, os.PathLike)), InvalidInputError, what, "a file path", type(path).__name__)
    target = Path(os.fspath(path)).expanduser().absolute()
    check_not_input(target, inputs, what=what)
    expect(not target.is_dir(), InvalidInputError, f"{what} {target}", "a file path", "a directory")
    if suffixes is not None:
        expect(target.suffix.lower() in suffixes, InvalidInputError, f"{what} {target}",
               f"a file name ending in {' or '.join(suffixes)}", f"the extension {target.suffix or '(none)'!r}")
    check_writable_dir(target.parent, f"{what} {target}")
    if clean_stale:
        remove_stale_partials(target.parent)
    return target


def check_output_dir(path: str | os.PathLike, *, inputs: Iterable[tuple[str, object]] = (),
                     what: str = "output directory") -> Path:
    """An output folder (avatar, sweep, converted model): not an input, not holding one, parent writable."""
    expect(isinstance(path, (str, os.PathLike)), InvalidInputError, what, "a directory path", type(path).__name__)
    target = Path(os.fspath(path)).expanduser().absolute()
    check_not_input(target, inputs, what=what, directory=True)
    expect(not target.exists() or target.is_dir(), InvalidInputError, f"{what} {target}", "a directory",
           "an existing file")
    parent = target if target.is_dir() else target.parent
    while not parent.exists() and parent != parent.parent:  # folders are created as needed
        parent = parent.parent
    check_writable_dir(parent, f"{what} {target}")
    return target
