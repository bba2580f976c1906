"""The package's structure (docs/architecture.md): no import cycle among the modules (issue 18:
backends -> cps -> models -> backends used to be one), imports only downward between the
pipeline's stages, and modules, classes and functions small enough to read (issue 25)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cloudcps"

# the pipeline's stages, lowest first: a module may import its own stage and the ones before it
STAGES: list[set[str]] = [
    {
        "errors",
        "io",
        "bands",
        "devices",
        "locks",
        "untrusted",
        "metrics",
        "contract",
        "modelfiles",
    },
    {"scenes"},
    {"tiling"},
    {"synthetic"},
    {"models"},
    {"train"},
    {"predict"},
    {"evaluate"},
    {"suggest"},
    {"demo"},
    {"cli"},
]
RANK = {name: i for i, stage in enumerate(STAGES) for name in stage}

MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 600, 300, 80
EXCEPTION = "One piece:"  # in the docstring of a module, class or function over its limit


def module_name(path: Path) -> str:
    """``cloudcps/train/loop.py`` -> ``cloudcps.train.loop``; a package's ``__init__`` is the
    package."""
    if not path.is_relative_to(PACKAGE.parent):
        return path.stem
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """The cloudcps modules ``path`` imports, at the top, inside functions or for type checking
    (``from cloudcps.x import y`` counts as ``cloudcps.x.y`` when that is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cloudcps" or node.module.startswith("cloudcps."):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in MODULES or node.module != "cloudcps":
                        out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = module_name(path).split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join([*base, *([node.module] if node.module else [])])
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cloudcps.")}
    return out - {module_name(path)}


def stage_of(module: str) -> str:
    return module.split(".")[1]


def test_every_module_has_a_stage() -> None:
    unplaced = sorted(m for m in MODULES if m != "cloudcps" and stage_of(m) not in RANK)
    assert not unplaced, f"add these to a stage in STAGES and docs/architecture.md: {unplaced}"


def test_no_import_cycle_among_the_modules() -> None:
    # the root only re-exports lazily (and for type checkers): not an import at run time
    graph = {
        m: {d for d in imports_of(p) if d in MODULES and d != "cloudcps"}
        for m, p in MODULES.items()
        if m != "cloudcps"
    }
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
    assert {"cloudcps.predict.backends", "cloudcps.train", "cloudcps.models"} <= set(graph)


def test_stages_import_only_downward() -> None:
    """A lower stage never imports a higher one (``cloudcps`` itself re-exports the public API
    lazily, and ``from cloudcps import __version__`` is allowed anywhere)."""
    wrong = []
    for m, p in MODULES.items():
        if m == "cloudcps":
            continue
        for d in imports_of(p):
            if RANK[stage_of(d)] > RANK[stage_of(m)]:
                wrong.append(f"{m} imports {d}")
    assert not wrong, "imports against the stage order (docs/architecture.md): " + "; ".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The import checker itself: a function-local and a relative import are both seen."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from cloudcps.predict import predict_scene\n")
    assert imports_of(f) == {"cloudcps.predict"}
    assert RANK[stage_of("cloudcps.predict")] > RANK[stage_of("cloudcps.scenes")]


def oversized(path: Path) -> list[str]:
    """Modules, classes and functions of ``path`` over their limit without a reason."""
    text = path.read_text()
    tree = ast.parse(text)
    out = []
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
    lines = len(text.splitlines())
    if lines > MAX_MODULE and EXCEPTION not in (ast.get_docstring(tree) or ""):
        out.append(f"{where}: {lines} lines (module)")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > limit and EXCEPTION not in (ast.get_docstring(node) or ""):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                out.append(f"{where}:{node.lineno} {node.name}: {n} ({kind})")
    return out


def test_modules_classes_and_functions_stay_readable() -> None:
    """At most 600 lines a module, 300 a class, 80 a function, unless its docstring says why it
    must be one piece ("One piece: ...")."""
    found = [o for p in MODULES.values() for o in oversized(p)]
    assert not found, "over the size limits, split or say why in the docstring:\n" + "\n".join(
        found
    )


def test_the_size_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION))
    f = tmp_path / "long.py"
    f.write_text(f"def long():\n{body}\n\ndef ok():\n    '''One piece: a reason.'''\n{body}")
    found = oversized(f)
    assert len(found) == 1 and "long" in found[0]
