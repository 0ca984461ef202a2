"""The layering of controller/, agent/ and dashboard/, checked on the source itself.

Every import counts: at module level, inside functions, and under ``if TYPE_CHECKING`` (an
annotation-only import still ties two modules' designs together). A ring of modules that import
each other fails, and so does a package that imports one above it in ``LAYERS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("agent", "controller", "dashboard")

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS: list[tuple[str, ...]] = [
    ("agent",),
    ("controller", "controller.errors", "controller.validation", "controller.workspace", "controller.plugins"),
    ("controller.data",),
    ("controller.passes", "controller.convert"),
    ("controller.config",),
    ("controller.build",),
    ("controller.results",),
    ("controller.boards", "dashboard"),
    ("controller.run", "controller.deploy", "controller.versions"),
    ("controller.cli",),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, by any import statement anywhere in it."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:  # `from pkg import module` imports the module
                    targets.add(resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in mods else resolve(base))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            ring = []
            while True:
                w = stack.pop()
                ring.append(w)
                if w == v:
                    break
            if len(ring) > 1:
                found.append(sorted(ring))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer of LAYERS"
    return rank


def test_no_module_imports_itself_through_a_ring() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_ring() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_package_imports_a_layer_above_it() -> None:
    upward = [f"{m} -> {t}" for m, targets in sorted(import_graph().items()) for t in sorted(targets)
              if layer_of(t) > layer_of(m)]
    assert upward == []


def test_the_agent_imports_nothing_of_the_controller() -> None:
    leaks = [f"{m} -> {t}" for m, targets in import_graph().items() if m.split(".")[0] == "agent"
             for t in targets if t.split(".")[0] != "agent"]
    assert leaks == []


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    for name, path in modules().items():
        if path.name == "__init__.py" and name.count(".") == 1 and name.startswith("controller."):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "May import" in doc, name
