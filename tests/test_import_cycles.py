"""No import circles between the engine's rooms (issue 22, item 10), found by parsing every import with ast.

Every import counts, also those inside functions (a lazy import is still a dependency: it only moves the
failure to run time), except those under `if TYPE_CHECKING:` (annotations only, never executed). Two rules:
- the rooms `engine.runtime` and `engine.pipeline` are not in one circle (the warm-up belongs to the pipeline);
- inside `engine.cluster` no module circle at all (batch and serve entry points import their Ray variants,
  never the other way round).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _executed_nodes(tree: ast.AST):
    """Every node, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph(package: str = "engine") -> dict[str, set[str]]:
    """{module: modules of `package` it imports anywhere in its source} (relative imports resolved)."""
    modules = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _executed_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def path_to(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A chain of imports from `start` to `goal`, or None."""
    seen, stack = {start}, [[start]]
    while stack:
        path = stack.pop()
        if path[-1] == goal:
            return path
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt not in seen:
                seen.add(nxt)
                stack.append([*path, nxt])
    return None


def room(graph: dict[str, set[str]], prefix: str) -> set[str]:
    return {m for m in graph if m == prefix or m.startswith(prefix + ".")}


def room_edges(graph: dict[str, set[str]], src: str, dst: str) -> list[tuple[str, str]]:
    """Direct imports from modules of room `src` into room `dst`."""
    return sorted((a, b) for a in room(graph, src) for b in graph[a] if b in room(graph, dst))


def test_runtime_does_not_import_pipeline():
    graph = import_graph()
    assert room_edges(graph, "engine.pipeline", "engine.runtime"), "expected pipeline -> runtime (the engine core)"
    assert room_edges(graph, "engine.runtime", "engine.pipeline") == []


def test_no_module_circle_in_cluster():
    graph = import_graph()
    cluster = room(graph, "engine.cluster")
    sub = {m: graph[m] & cluster for m in cluster}
    circles = []
    for m in sorted(cluster):
        for n in sorted(sub[m]):
            back = path_to(sub, n, m)
            if back:
                circles.append([m, *back])
    assert circles == []


def test_entry_points_import_their_ray_variants():
    graph = import_graph()
    assert "engine.cluster.ray_batch" in graph["engine.cluster.batch"]
    assert "engine.cluster.serve_app" in graph["engine.cluster.serving"]


def test_the_graph_sees_lazy_imports():
    """The parser finds an import inside a function (the kind that hid these circles)."""
    graph = import_graph()
    assert "engine.runtime.warmup" not in graph  # moved to the pipeline
    assert "engine.pipeline.warmup" in graph["engine.pipeline.core"]  # imported inside LipSyncCore.warm_up
