"""The layout of ``tools/``: no import cycle, no module over 500 lines, both entry points run.

``tools/patchqueue/`` is the patch-queue tool, one module per concern; ``tools/pq.py`` and
``tools/pq_npm.py`` are its command lines. The import graph is read from the source (AST), so
an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TOOLS = Path(__file__).resolve().parents[1] / "tools"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(TOOLS.rglob("*.py")):
        parts = list(path.relative_to(TOOLS).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``tools/`` it imports (a package's own ``__init__`` left out)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            graph[name] |= {
                t for t in targets if t in modules and t != name and not name.startswith(t + ".")
            }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_tools_have_no_import_cycle() -> None:
    graph = import_graph()
    assert "patchqueue.npm" in graph["patchqueue.checkseries"]  # the graph sees `from . import`
    assert cycles(graph) == []


def test_npm_half_does_not_import_back() -> None:
    graph = import_graph()
    users = {name for name, deps in graph.items() if "patchqueue.npm" in deps}
    assert users == {"patchqueue.checkseries", "patchqueue.cli", "pq_npm"}
    assert not graph["patchqueue.npm"] & {"patchqueue", "patchqueue.cli", "patchqueue.checkseries"}


def test_no_module_over_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize(
    "cmd",
    [["tools/pq.py", "--help"], ["-m", "tools.pq", "--help"], ["tools/pq_npm.py", "--help"]],
)
def test_entry_points_run(cmd: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, *cmd], cwd=TOOLS.parent, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: pq" in proc.stdout
