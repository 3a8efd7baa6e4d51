"""What a test run may not change: the top level of `/tmp` and `$HOME`, and the whole `~/.cache` subtree.

A snapshot maps each entry to (kind, size, mtime): a new, removed or modified entry shows as a difference. Used by
tests/test_hermetic.py (around a pytest subprocess) and by `.ci/run` (around the whole CI run), from the command
line without the project installed:

    python3 tests/hermetic_snapshot.py save FILE       # before
    python3 tests/hermetic_snapshot.py compare FILE    # after: exit 1 and list the differences, if any

Entries that other processes on a shared machine change during the run can be left out with `HERMETIC_IGNORE`:
space-separated shell patterns matched against the displayed paths (e.g. `"/tmp/bash_jobs.* ~/.cache/pip/*"`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from pathlib import Path

Snapshot = dict[str, list]  # displayed path -> [kind, size, mtime_ns]


def _entry(path: Path) -> list:
    st = path.lstat()
    kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
    return [kind, 0 if kind == "dir" else st.st_size, st.st_mtime_ns]


def _top_level(folder: Path, shown: str, out: Snapshot) -> None:
    try:
        children = list(folder.iterdir())
    except OSError:
        return
    for child in children:
        try:
            out[f"{shown}/{child.name}"] = _entry(child)
        except OSError:  # removed while listing
            pass


def _subtree(folder: Path, shown: str, out: Snapshot) -> None:
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        prefix = shown if rel == "." else f"{shown}/{rel}"
        for name in dirs + files:
            try:
                out[f"{prefix}/{name}"] = _entry(Path(root) / name)
            except OSError:
                pass


def take(home: Path | None = None, tmp: Path = Path("/tmp")) -> Snapshot:
    """The entries a run must leave as it found them: top level of `tmp` and `home`, all of `home/.cache`."""
    home = Path(home or os.path.expanduser("~"))
    out: Snapshot = {}
    _top_level(tmp, str(tmp), out)
    _top_level(home, "~", out)
    _subtree(home / ".cache", "~/.cache", out)
    return out


def differences(before: Snapshot, after: Snapshot, ignore: list[str] | None = None) -> list[str]:
    """'added X', 'removed X', 'changed X' lines, sorted; paths matching an `ignore` pattern are left out."""
    patterns = ignore if ignore is not None else os.environ.get("HERMETIC_IGNORE", "").split()
    lines = []
    for path in sorted(set(before) | set(after)):
        if any(fnmatch.fnmatch(path, p) for p in patterns):
            continue
        if path not in before:
            lines.append(f"added   {path}")
        elif path not in after:
            lines.append(f"removed {path}")
        elif before[path] != after[path]:
            lines.append(f"changed {path}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    command, file = argv
    if command == "save":
        Path(file).write_text(json.dumps(take()))
        return 0
    found = differences(json.loads(Path(file).read_text()), take())
    if found:
        print(f"hermetic: the run changed {len(found)} entries of $HOME or /tmp:", *found[:50], sep="\n  ")
        return 1
    print("hermetic: $HOME and /tmp are as the run found them")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
