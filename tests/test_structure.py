"""The package's shape, as CONTRIBUTING.md states it: one-way imports, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "popcon_site"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The package modules a module imports at run time, lazily or not.

    ``if TYPE_CHECKING:`` blocks are left out: they never run.  ``from popcon_site
    import _index`` names the submodule ``popcon_site._index``.
    """
    tree = ast.parse(path.read_text())
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    if "popcon_site.cli" in this:  # importlib.import_module(f"popcon_site.cli.{name}")
        found.update(f"popcon_site.cli.{name}" for name in _commands(tree))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != this}


def _commands(tree: ast.AST) -> list[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMMANDS":
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    return []


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): runtime_imports(path) for path in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]], allowed: set[tuple[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if (node, target) in allowed:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# The start-up half loads its exit half lazily (and _fork); every other module
# may import the package root for the shared vocabulary.  Those are the only upward edges.
LAZY_FROM_ROOT = {
    ("popcon_site", "popcon_site._report"),
    ("popcon_site", "popcon_site._fork"),
}


def test_no_import_cycle_among_the_package_modules() -> None:
    graph = import_graph()
    assert "popcon_site._attribution" in graph["popcon_site._report"]  # the reader works
    assert find_cycle(graph, LAZY_FROM_ROOT) is None, find_cycle(graph, LAZY_FROM_ROOT)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph, set()) == ["a", "b", "c", "a"]
    assert find_cycle(graph, {("c", "a")}) is None


def test_the_root_imports_nothing_of_the_package_but_its_lazy_exit_half() -> None:
    assert {("popcon_site", t) for t in import_graph()["popcon_site"]} <= LAZY_FROM_ROOT


def test_reporting_modules_never_import_the_cli() -> None:
    graph = import_graph()
    reporting = [
        name
        for name in graph
        if not name.startswith(
            ("popcon_site.cli", "popcon_site._installed", "popcon_site.__main__")
        )
    ]
    for name in reporting:
        assert not {
            t
            for t in graph[name]
            if t.startswith("popcon_site.cli") or t == "popcon_site._installed"
        }, name


# About 500: _report.py is the longest, on purpose one file (every exit loads it, and
# each more module costs an exit ~0.2 ms).
MAX_LINES = 550


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_over_about_500_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines, split it (CONTRIBUTING.md)"
