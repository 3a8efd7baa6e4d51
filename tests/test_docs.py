"""README.md and docs/*.md: every relative link resolves, every figure matches the JSON it links to, the README stays
short, the exit-code table matches engine/errors.py, and the text speaks of the project and its users only.

The figure convention (docs/development.md, "Figures in the docs"): a figure is a link whose text is the number and
whose target is a committed JSON file under benchmarks/results/ with the key path as fragment, e.g.
`[240](benchmarks/results/cpu_demo.json#runs.fresh_cache.output_frames)`. The printed number must be the value at
that key rounded to the printed digits. A link whose text is a number must be such a figure.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest

from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
RESULTS = REPO_ROOT / "benchmarks" / "results"
README_MAX_LINES = 150

# Pages that parallel work adds to docs/ and the README already links to. They do not exist on this branch yet;
# the lead empties this tuple after merging them, so that from then on every link must resolve.
PAGES_NOT_YET_MERGED: tuple[str, ...] = ()  # pages other work adds and the README links before they land

LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
FIGURE_TEXT = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (links inside code are examples)."""
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "``", text)


def links(path: Path) -> list[tuple[int, str, str]]:
    """(line, text, target) of every markdown link in `path`, outside code."""
    text = _without_code(path.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in LINK.finditer(text)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading))


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def json_value(data, key: str):
    """The value at a dotted key path (list items by their index)."""
    for part in key.split("."):
        if isinstance(data, list):
            assert part.isdigit() and int(part) < len(data), f"no item {part!r} in a list of {len(data)}"
            data = data[int(part)]
        else:
            assert isinstance(data, dict) and part in data, f"no key {part!r} (have {sorted(data)[:20]})"
            data = data[part]
    return data


def figure_matches(printed: str, value) -> bool:
    """`printed` is `value` rounded to the printed digits (half a unit in the last printed place)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    number = Decimal(printed)
    tolerance = Decimal(5) * Decimal(10) ** (number.as_tuple().exponent - 1)
    return abs(Decimal(repr(float(value))) - number) <= tolerance


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO_ROOT)}:{line}"


ALL_LINKS = [(path, line, text, target) for path in documents() for line, text, target in links(path)]


def test_the_documents_exist_and_link_to_each_other():
    assert README.is_file() and (DOCS / "serving.md").is_file()
    readme_targets = {target.split("#")[0] for path, _, _, target in ALL_LINKS if path == README}
    missing = [f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in readme_targets]
    assert not missing, f"docs pages the README's link table does not list: {missing}"


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (move detail to docs/)"


def test_every_relative_link_resolves():
    broken = []
    for path, line, _, target in ALL_LINKS:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not ours to check here
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        relative = resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else None
        if relative in PAGES_NOT_YET_MERGED and not resolved.exists():
            continue
        if not resolved.exists():
            broken.append(f"{_where(path, line)}: {target} (no such file)")
        elif resolved.suffix == ".md" and fragment and fragment not in anchors(resolved):
            broken.append(f"{_where(path, line)}: {target} (no heading #{fragment} in {relative})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_allow_list_names_only_pages_that_are_missing():
    """Once a page of PAGES_NOT_YET_MERGED exists, it must leave the list (so its links are checked)."""
    assert not [p for p in PAGES_NOT_YET_MERGED if (REPO_ROOT / p).exists()]


FIGURES = [(path, line, text, target) for path, line, text, target in ALL_LINKS
           if FIGURE_TEXT.fullmatch(text) or (".json#" in target and "benchmarks/results/" in target)]


def test_the_documents_quote_figures_from_their_json():
    assert len(FIGURES) >= 20
    assert any(path == README for path, *_ in FIGURES)


@pytest.mark.parametrize("path, line, text, target", FIGURES,
                         ids=[f"{_where(p, n)}:{t}" for p, n, t, _ in FIGURES])
def test_figure_matches_its_json(path, line, text, target):
    file_part, _, key = target.partition("#")
    source = (path.parent / file_part).resolve()
    assert FIGURE_TEXT.fullmatch(text), f"a figure link's text must be the number alone, found {text!r}"
    assert source.suffix == ".json" and source.is_relative_to(RESULTS), \
        f"a figure must link to a committed JSON under benchmarks/results/, found {target}"
    assert key, f"{target}: name the key of the figure after '#'"
    value = json_value(json.loads(source.read_text()), key)
    assert figure_matches(text, value), f"{target} holds {value!r}, the text says {text}"


def test_figure_rounding_rule():
    assert figure_matches("240", 240) and figure_matches("797", 797.4) and figure_matches("7.2e-06", 7.15e-06)
    assert figure_matches("1.0", 1.0) and figure_matches("2.24", 2.235)
    assert not figure_matches("242", 240) and not figure_matches("2.3", 2.235) and not figure_matches("1", "1")
    assert not figure_matches("1", True)
    with pytest.raises(InvalidOperation):
        figure_matches("3 min", 3)


def test_the_exit_code_table_matches_the_errors():
    import engine.errors as errors

    text = (DOCS / "reliability.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", text, re.M))
    classes = {name: cls for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, errors.EngineError) and "exit_code" in vars(cls)}
    assert {int(code): name for code, name in table.items()} == {cls.exit_code: name for name, cls in classes.items()}


FOREIGN = (  # text about package indexes and machines that are not the user's
    r"development machine", r"CI index", r"this project's CI", r"\.\./shared/RELIABILITY", r"lent machine",
    r"this workplace", r"device tool",
)


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_the_text_speaks_of_the_project_and_its_users_only(path):
    text = path.read_text(encoding="utf-8")
    found = [pattern for pattern in FOREIGN if re.search(pattern, text, re.I)]
    assert not found, f"{path.name} mentions {found}"
    shared = [n + 1 for n, line in enumerate(text.splitlines()) if "../shared" in line]
    if path.name != "development.md":
        assert not shared, f"{path.name}:{shared} mentions ../shared (only development.md's parity fixtures may)"
