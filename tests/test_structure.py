"""The package's module structure: no import cycle (issue 18: backends -> cps -> models ->
backends used to be one, held together by imports inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cloudcps"


def imports_of(path: Path) -> set[str]:
    """The cloudcps modules ``path`` imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("cloudcps."):
                out.add(node.module.split(".")[1])
            elif node.module == "cloudcps":
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cloudcps.")}
    return out - {path.stem}


def test_no_import_cycle_among_the_modules() -> None:
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py")}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*path[path.index(d) :], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert {"backends", "cps", "models"} <= set(graph)
