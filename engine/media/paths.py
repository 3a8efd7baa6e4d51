"""Output paths checked before any work: never the user's input, always writable, and tidy after a kill.

Every front end (CLI, SDK, batch runner) calls `check_output` with its output and input paths at
the start of a job, so a mistake such as `--video X --output X` is refused in milliseconds instead
of replacing the user's source after minutes of work, and a missing or read-only directory is named
as such instead of surfacing as an encoder error after the first chunk.

One rule for every path a command writes (outputs, reports, job records, avatars, eval JSON, exported
artifacts): `check_write_plan(outputs, inputs)` refuses, before any work, an output that resolves to an
input of the same command (same path, a symlink to it, or a hard link: same device and inode) or to
another output of the same command (two writers, one file). Every command calls it (through
`check_output` / `check_output_dir` for one output) with everything it reads and writes.

File-name limits: `check_name_limits` checks the output name and path against NAME_MAX / PATH_MAX of the
target file system (os.pathconf) up front; temporary names are shortened to fit (`fit_name`), so any
legal output name works.

Temporary files: writers put their output at `.<name>.<pid>-<host>-<hex>.partial` beside the target
(`<name>` shortened when the whole would pass NAME_MAX) and rename it on success. A process killed with SIGKILL cannot remove its file; the next job that
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
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidInputError, OutputWriteError, expect

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov")  # what VideoWriter's mp4 muxer writes sensibly
WAV_SUFFIXES = (".wav",)
PARTIAL_SUFFIX = ".partial"
_PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-(?P<tag>[0-9a-f]{12})\.partial$")


def host_tag() -> str:
    """6 hex digits naming this machine, so a shared directory never mixes up two hosts' process ids."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


DEFAULT_NAME_MAX, DEFAULT_PATH_MAX = 255, 4096  # Linux's, where pathconf cannot say


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def name_limits(directory: str | os.PathLike) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) in bytes of the file system holding `directory` (or its nearest existing parent)."""
    where = _existing_ancestor(Path(os.fspath(directory)).expanduser().absolute())
    limits = []
    for key, default in (("PC_NAME_MAX", DEFAULT_NAME_MAX), ("PC_PATH_MAX", DEFAULT_PATH_MAX)):
        try:
            value = os.pathconf(where, key)
        except (OSError, ValueError):
            value = -1
        limits.append(value if value and value > 0 else default)
    return limits[0], limits[1]


def name_bytes(name: str | os.PathLike) -> int:
    """Length of a name as the file system counts it (bytes in the file-system encoding)."""
    return len(os.fsencode(name))


def fit_name(name: str, room: int) -> str:
    """`name` cut to at most `room` bytes (never empty); a cut inside a multi-byte character keeps valid bytes."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    cut = raw[:max(1, room)]
    while cut and len(cut) > 1:  # do not end inside a UTF-8 sequence
        try:
            return cut.decode("utf-8")
        except UnicodeDecodeError:
            cut = cut[:-1]
    return os.fsdecode(cut)


def temporary_name(target: Path, suffix: str) -> Path:
    """`.<name><suffix>` beside `target`, `<name>` shortened so the whole fits the file system's NAME_MAX."""
    name_max = name_limits(target.parent)[0]
    return target.with_name(f".{fit_name(target.name, name_max - 1 - name_bytes(suffix))}{suffix}")


def partial_path(target: Path) -> Path:
    """A unique hidden name beside `target` (same filesystem, so the final rename is atomic), naming its owner;
    always within NAME_MAX, whatever the length of the target's (legal) name."""
    return temporary_name(target, f".{os.getpid()}-{host_tag()}-{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


def check_name_limits(target: Path, what: str = "output") -> None:
    """InvalidInputError (exit 2) when `target`'s name or full path is longer than its file system allows."""
    name_max, path_max = name_limits(target.parent)
    n = name_bytes(target.name)
    shown = f"{what} {str(target)[:60]}...{str(target)[-20:]}" if len(str(target)) > 100 else f"{what} {target}"
    expect(n <= name_max, InvalidInputError, shown,
           f"a file name of at most {name_max} bytes (NAME_MAX of the file system there)", f"{n} bytes")
    p = name_bytes(str(target))
    expect(p < path_max, InvalidInputError, shown,
           f"a path of at most {path_max - 1} bytes (PATH_MAX of the file system there)", f"{p} bytes")


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


@dataclass(frozen=True)
class PathRole:
    """One path a command reads or writes: its label in messages ("--report", "output"), whether it is a folder
    (an output folder may not hold an input), and the manifest line it comes from (batch), if any."""

    label: str
    path: str | os.PathLike
    directory: bool = False
    line: int | None = None

    def describe(self) -> str:
        return f"{self.label} {os.fspath(self.path)}" + (f" (line {self.line})" if self.line is not None else "")


@dataclass(frozen=True)
class Conflict:
    """An output that would destroy something: an input of the command, or another of its outputs."""

    output: PathRole
    other: PathRole
    kind: str  # "input" | "output" | "inside"

    def message(self) -> str:
        where = f"{self.output.label} {os.fspath(self.output.path)}"
        if self.kind == "input":
            return (f"{where}: expected a path that is not an input, found the same file as "
                    f"{self.other.describe()}; refusing to overwrite the input")
        if self.kind == "inside":
            return f"{where}: expected a directory that does not hold an input, found {self.other.describe()} inside it"
        return (f"{where}: expected a path no other output of this command writes, found the same file as "
                f"{self.other.describe()}")


def _as_role(item) -> PathRole | None:
    if isinstance(item, PathRole):
        return item
    label, path = item
    return PathRole(str(label), path) if isinstance(path, (str, os.PathLike)) else None  # arrays: not files


def _file_keys(path: str | os.PathLike) -> list:
    """What identifies the file a path names: its resolved path (symlinks followed, existing or not) and,
    when it exists, its (device, inode), which a hard link shares."""
    p = Path(os.fspath(path)).expanduser()
    keys: list = [str(p.resolve())]
    identity = _identity(p)
    if identity is not None:
        keys.append(identity)
    return keys


def write_conflicts(outputs: Iterable, inputs: Iterable) -> list[Conflict]:
    """Every output (a PathRole or (label, path)) that resolves to an input (same path, symlink, hard link) or
    to an earlier output; and every output folder that holds an input. Linear in the number of paths."""
    sources = [r for r in map(_as_role, inputs) if r is not None]
    by_key: dict = {}
    for role in sources:
        for key in _file_keys(role.path):
            by_key.setdefault(key, role)
    written: dict = {}
    found: list[Conflict] = []
    for role in (r for r in map(_as_role, outputs) if r is not None):
        keys = _file_keys(role.path)
        hit = next((by_key[k] for k in keys if k in by_key), None)
        if hit is not None:
            found.append(Conflict(role, hit, "input"))
        else:
            twin = next((written[k] for k in keys if k in written), None)
            if twin is not None:
                found.append(Conflict(role, twin, "output"))
        for key in keys:
            written.setdefault(key, role)
        if role.directory and Path(os.fspath(role.path)).expanduser().exists():
            found.extend(Conflict(role, s, "inside") for s in sources if inside(s.path, role.path))
    return found


def check_write_plan(outputs: Iterable, inputs: Iterable) -> None:
    """The one rule for every path a command writes (module docstring): InvalidInputError (exit 2) naming
    every conflict, before any work. `outputs` / `inputs`: PathRole or (label, path) pairs."""
    conflicts = write_conflicts(outputs, inputs)
    if len(conflicts) == 1:
        raise InvalidInputError(conflicts[0].message())
    if conflicts:
        raise InvalidInputError(f"{len(conflicts)} outputs would overwrite an input or another output:\n"
                                + "\n".join(f"  {c.message()}" for c in conflicts))


def check_not_input(output: str | os.PathLike, inputs: Iterable[tuple[str, object]], *, what: str = "output",
                    directory: bool = False) -> None:
    """InvalidInputError when `output` is one of the inputs (or, for an output directory, holds one): the
    write-plan rule for a single output. `inputs` are (label, path) pairs; non-path inputs (arrays) are skipped."""
    check_write_plan([PathRole(what, output, directory=directory)], inputs)


def check_writable_dir(directory: Path, what: str) -> None:
    """InvalidInputError unless a file can really be created in `directory` (read-only mounts, permissions)."""
    expect(directory.is_dir(), InvalidInputError, what, f"an existing output directory {directory}",
           "nothing there" if not directory.exists() else "a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=directory)
    except OSError as exc:
        if exc.errno in FULL_DISK_ERRNOS:
            raise output_write_error(directory, exc, what) from exc
        why = {errno.EROFS: "a read-only filesystem", errno.EACCES: "no write permission",
               errno.EPERM: "no write permission"}.get(exc.errno, str(exc))
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
    check_name_limits(target, what)  # first: stat() of a name over NAME_MAX raises OSError itself
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
    check_name_limits(target, what)
    check_not_input(target, inputs, what=what, directory=True)
    expect(not target.exists() or target.is_dir(), InvalidInputError, f"{what} {target}", "a directory",
           "an existing file")
    parent = target if target.is_dir() else target.parent
    while not parent.exists() and parent != parent.parent:  # folders are created as needed
        parent = parent.parent
    check_writable_dir(parent, f"{what} {target}")
    return target


# ---------------------------------------------------------------------------------------------- write failures
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded
WRITE_ERRNOS = (*FULL_DISK_ERRNOS, errno.EFBIG, errno.EIO)  # and the file-size limit, a failing device


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system holding `path` (None when it cannot be asked)."""
    import shutil

    try:
        return shutil.disk_usage(_existing_ancestor(Path(os.fspath(path)).expanduser().absolute())).free
    except OSError:
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown free space"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} free"
    return f"{n} bytes free"


def is_write_failure(exc: BaseException) -> bool:
    """True for an OSError (PyAV's included) that means the output could not be written: disk full, quota,
    file-size limit, I/O error; not for a missing folder or a permission problem (those are checked up front)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def output_write_error(path: str | os.PathLike, exc: OSError, what: str = "output") -> OutputWriteError:
    """The typed error for a failed write of `path`: names the path, the free space there and the OS error."""
    reason = {errno.ENOSPC: "the disk full", errno.EDQUOT: "the disk quota exceeded",
              errno.EFBIG: "the file size limit reached", errno.EIO: "an I/O error"}.get(exc.errno, "a write error")
    strerror = exc.strerror or os.strerror(exc.errno or 0)
    return OutputWriteError(f"{what} {os.fspath(path)}: expected room to write it, found {reason} "
                            f"({_size(free_bytes(path))} there; [Errno {exc.errno}] {strerror}); "
                            "the partial file was removed and no input was changed")
