"""Import-name collisions: a folder or our own package hiding another distribution's top-level module.

Python puts the working directory (or a script's folder) first on `sys.path`, so a folder `kernels/` with an
`__init__.py` in the directory where Python starts hides the installed `kernels` package that transformers
imports. These helpers find such collisions for `engine doctor`, the import-error report of the tests and the
collision test, without importing the packages they inspect.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

DISTRIBUTION = "latentsync-engine"


@dataclass(frozen=True)
class Shadow:
    """A module `name` in `folder` that hides `distribution`'s installed module at `installed`."""

    name: str
    folder: Path
    distribution: str
    version: str
    installed: str

    def describe(self) -> str:
        return (f"{self.folder} hides the installed package '{self.name}' ({self.distribution} {self.version}, at "
                f"{self.installed}) for any Python started in {self.folder.parent}: rename or move that folder")


def top_level_owners() -> dict[str, list[str]]:
    """Top-level import name -> the distributions that install it (deduplicated, in install order)."""
    return {name: list(dict.fromkeys(dists)) for name, dists in importlib.metadata.packages_distributions().items()}


def local_modules(directory: Path) -> dict[str, Path]:
    """Regular packages and modules importable from `directory` when it is first on sys.path.

    A folder without `__init__.py` is left out: it is at most a namespace portion, and an installed regular
    package of the same name wins over it.
    """
    found: dict[str, Path] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.is_dir() and (entry / "__init__.py").is_file() and entry.name.isidentifier():
            found[entry.name] = entry
        elif entry.is_file() and entry.suffix == ".py" and entry.stem.isidentifier():
            found[entry.stem] = entry
    return found


def _installed_location(name: str, directory: Path) -> str:
    """Where `name` resolves when `directory` is not on the path (no import: only the finder runs)."""
    resolved = directory.resolve()
    path = [p for p in sys.path if p and Path(p).resolve() != resolved]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        return "?"
    return str(Path(spec.origin).parent if spec.origin and spec.origin.endswith("__init__.py")
               else spec.origin or list(spec.submodule_search_locations or ["?"])[0])


def shadows_in(directory: Path, own: str = DISTRIBUTION) -> list[Shadow]:
    """Installed packages of other distributions that a module in `directory` hides.

    Our own package in its own source checkout is not a shadow (that is an editable install working as meant).
    """
    owners = top_level_owners()
    out = []
    for name, path in local_modules(directory).items():
        for dist in owners.get(name, []):
            if dist == own:
                continue
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            out.append(Shadow(name, path, dist, version, _installed_location(name, directory)))
    return out


def distribution_of_module(module: str) -> tuple[str, str] | None:
    """(distribution, version) that installs the top-level package of `module` (e.g. 'diffusers.loaders')."""
    top = module.split(".")[0]
    dists = top_level_owners().get(top)
    if not dists:
        return None
    try:
        return dists[0], importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        return dists[0], "?"


def explain_import_error(exc: BaseException) -> str | None:
    """Which package an ImportError came from: the importing distribution, the imported one and where it resolved.

    Used by the tests so that a break caused by an upstream release names the release at once, e.g.
    "transformers 5.25.0 (transformers.integrations.hub_kernels) failed to import 'kernels' ...".
    """
    chain: list[BaseException] = []
    seen = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    error = next((e for e in chain if isinstance(e, ImportError)), None)
    if error is None:
        return None
    importer = None
    tb = error.__traceback__
    while tb is not None:  # the innermost frame that belongs to an installed distribution other than ours
        module = tb.tb_frame.f_globals.get("__name__", "")
        owner = distribution_of_module(module) if module else None
        if owner and owner[0] != DISTRIBUTION:
            importer = (module, owner)
        tb = tb.tb_next
    target = error.name or "?"
    owner = distribution_of_module(target) if error.name else None
    parts = []
    if importer:
        module, (dist, version) = importer
        parts.append(f"{dist} {version} (in {module}) failed to import '{target}'")
    else:
        parts.append(f"failed to import '{target}'")
    if owner:
        parts.append(f"'{target.split('.')[0]}' is installed by {owner[0]} {owner[1]}")
    else:
        parts.append(f"no installed distribution provides '{target.split('.')[0]}'")
    if error.path:
        parts.append(f"it resolved to {error.path}")
        if "site-packages" not in error.path and "dist-packages" not in error.path:
            parts.append("a local file or folder, not the installed package (a shadow: see `engine doctor`)")
    return "; ".join(parts)
