"""The package's imports run one way (issue 13 item 18): no module imports, at top level or inside a
function, a module that imports it back. Read from the source with ast, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vrrestore"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the vrrestore modules it imports (``from .x import name`` counts x, and x.name if a
    module; ``from . import sub`` counts only the submodules)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names]
                # `from . import ckpt` needs the submodule, not what the package's __init__ imports
                targets = subs if all(t in mods for t in subs) else [target, *subs]
            graph[mod].update(t for t in targets if t in mods and t != mod)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_anywhere():
    assert circles(import_graph()) == []


def test_stages_and_export_share_files_not_each_other():
    graph = import_graph()
    assert "vrrestore.train.export" not in graph["vrrestore.train.stages"]
    assert "vrrestore.train.files" in graph["vrrestore.train.stages"] and "vrrestore.train.files" in graph["vrrestore.train.export"]


def test_face_backends_depend_on_base_not_on_each_other():
    graph = import_graph()
    assert "vrrestore.face.detect" not in graph["vrrestore.face.retinaface"]
    assert "vrrestore.face.base" in graph["vrrestore.face.retinaface"]
    assert {"vrrestore.face.detect", "vrrestore.face.retinaface"}.isdisjoint(graph["vrrestore.face.base"])
