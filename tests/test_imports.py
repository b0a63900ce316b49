"""The shape of src/lmops: no import cycles, and the ground floor imports no stage.

Read with ``ast`` (no import runs, no extra dependency). Every ``import`` and ``from ... import`` counts,
also those inside functions: a lazy import still ties the two modules together, it only hides the circle
until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lmops"
GROUND = {"config", "manifest", "storage", "kube", "errors", "processes", "devices", "model", "gates", "failpoints"}
"""The shared ground (DESIGN.md): modules every stage may use, which use no stage themselves."""
STAGES = {"data", "train", "evaluate", "compress", "registry", "serve", "pipeline", "operator", "cluster", "cli"}


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``src``."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    files = module_files(src)

    def known(name: str) -> str | None:  # the module a dotted name lives in (an attribute's owner)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] == PACKAGE:
                    # `from lmops.x import y`: the submodule y when there is one, else the module x
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else known(base) for a in node.names]
            for target in targets:
                if target and target != mod:
                    edges.setdefault(target, node.lineno)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan), each given as one
    circle through its modules (a -> b -> ... -> a), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the package's module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_circle(graph, c) for c in components)


def _circle(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component (BFS)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in component and w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not a cycle")  # a component of >1 always has one


def _floor(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    lines = [" -> ".join(c) + "   (" + ", ".join(f"{a} line {graph[a][b]}" for a, b in zip(c, c[1:])) + ")"
             for c in found]
    assert not found, "import cycles in src/lmops:\n" + "\n".join(lines)


def test_the_ground_floor_imports_no_stage():
    upward = [f"{mod} line {line} imports {target}" for mod, edges in import_graph().items()
              if _floor(mod) in GROUND for target, line in edges.items() if _floor(target) in STAGES]
    assert not upward, "the shared ground imports a stage:\n" + "\n".join(upward)


STAGE_ORDER = ["data", "train", "evaluate", "compress", "registry", "serve", "pipeline", "operator"]
"""The stages in the order data flows through them: a stage imports only those before it."""
KNOWN_UPWARD = {
    # the int8 format's reader lives with its writer (compress/), so the two never drift apart; evaluate
    # and serve load int8 directories through it (lazily, only for such a directory)
    ("lmops.evaluate.metrics", "lmops.compress.quantize"),
    # registry/ is the only package that talks to MLflow; training logs its metrics there
    ("lmops.train.ray_train", "lmops.registry"),
    ("lmops.train.stage", "lmops.registry"),
}


def test_stages_import_only_earlier_stages():
    graph = import_graph()
    upward = [f"{mod} line {line} imports {target}" for mod, edges in graph.items() for target, line in edges.items()
              if _floor(mod) in STAGE_ORDER and _floor(target) in STAGE_ORDER
              and STAGE_ORDER.index(_floor(target)) > STAGE_ORDER.index(_floor(mod))
              and (mod, target) not in KNOWN_UPWARD]
    assert not upward, "a stage imports a later one:\n" + "\n".join(upward)


def test_top_level_modules_are_only_the_shared_ground():
    top = {p.stem for p in (SRC / PACKAGE).glob("*.py")} - {"__init__", "cli"}
    assert top <= GROUND, f"top-level modules that belong in a stage package: {sorted(top - GROUND)}"


# ---------------------------------------------------------------- the checker itself, on made-up packages
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("a_text", [
    "from lmops.b import f\n",
    "def g():\n    from lmops.b import f\n",          # lazy: still a circle
    "from . import b\n",                              # relative, a submodule
    "import lmops.b.c\n",                             # a module inside a subpackage
])
def test_a_cycle_is_found_and_named(tmp_path, a_text):
    files = {"a.py": a_text, "b/__init__.py": "from lmops.b.c import h\nfrom lmops.a import x\n",
             "b/c.py": "from lmops.a import x\n"}
    found = cycles(import_graph(_package(tmp_path, files)))
    assert found and all(c[0] == c[-1] for c in found), found
    assert any("lmops.a" in c for c in found), found


def test_a_chain_without_a_circle_passes(tmp_path):
    files = {"a.py": "from lmops.b import f\n", "b.py": "from lmops import c\n", "c.py": "import os\n"}
    graph = import_graph(_package(tmp_path, files))
    assert graph["lmops.a"] == {"lmops.b": 1} and graph["lmops.b"] == {"lmops.c": 1}
    assert cycles(graph) == []


def test_the_circle_named_is_the_shortest_one(tmp_path):
    files = {"a.py": "from lmops.b import f\nfrom lmops.c import g\n", "b.py": "from lmops.a import x\n",
             "c.py": "from lmops.d import y\n", "d.py": "from lmops.a import z\n"}
    assert cycles(import_graph(_package(tmp_path, files))) == [["lmops.a", "lmops.b", "lmops.a"]]
