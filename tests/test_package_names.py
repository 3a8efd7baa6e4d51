"""No top-level import name of ours belongs to another distribution, and the repository root shadows nothing.

A root `kernels/__init__.py` once hid Hugging Face's `kernels` (required by transformers) for every Python started
in the repository root, so every transformers and diffusers import failed there. These tests fail on any such
collision, for the names we install and for every module the root makes importable.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from engine.shadowing import DISTRIBUTION, explain_import_error, local_modules, shadows_in, top_level_owners

REPO_ROOT = Path(__file__).resolve().parents[1]


def _our_names() -> set[str]:
    names = set(local_modules(REPO_ROOT))
    try:
        top_level = importlib.metadata.distribution(DISTRIBUTION).read_text("top_level.txt") or ""
    except importlib.metadata.PackageNotFoundError:
        top_level = ""
    return names | {line.strip() for line in top_level.splitlines() if line.strip()}


def test_our_import_names_belong_to_no_other_distribution():
    names = _our_names()
    assert {"engine", "export"} <= names, names
    owners = top_level_owners()
    clashes = {name: [d for d in owners.get(name, []) if d != DISTRIBUTION] for name in names}
    clashes = {name: dists for name, dists in clashes.items() if dists}
    assert not clashes, f"top-level names of ours also installed by other distributions: {clashes}"


def test_repository_root_shadows_no_installed_package():
    assert not (REPO_ROOT / "kernels" / "__init__.py").exists(), "kernels/ must not be a package (Hugging Face's)"
    assert shadows_in(REPO_ROOT) == []


def test_transformers_and_diffusers_import_from_the_repository_root():
    code = ("import transformers.integrations.hub_kernels\n"
            "from diffusers import AutoencoderKL\n"
            "import engine, export\n"
            "assert engine.__file__.startswith(%r), engine.__file__\n" % str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_shadowing_folder_is_found_and_explained(tmp_path):
    pytest.importorskip("kernels")  # Hugging Face's, installed with transformers
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    found = shadows_in(tmp_path)
    assert [s.name for s in found] == ["kernels"]
    assert found[0].distribution == "kernels" and str(tmp_path / "kernels") in found[0].describe()
    assert "site-packages" in found[0].installed
    code = "import transformers.integrations.hub_kernels"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        pytest.skip("this transformers release does not import kernels at module level")
    assert "kernels" in done.stderr


def test_import_error_names_its_origin(tmp_path, monkeypatch):
    (tmp_path / "fake_upstream_pkg").mkdir()
    (tmp_path / "fake_upstream_pkg" / "__init__.py").write_text("from kernels import NoSuchThing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        import fake_upstream_pkg  # noqa: F401
    text = explain_import_error(info.value)
    assert "failed to import 'kernels'" in text
    owner = top_level_owners().get("kernels")
    if owner:
        assert f"installed by {owner[0]}" in text
