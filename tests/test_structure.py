"""The package's structure: no import cycles among hf_llc modules (function-local imports
included), no function-local imports of hf_llc modules in the estimator's layers, and no
function longer than 100 lines anywhere in hf_llc."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hf_llc"
#: Modules that import hf_llc modules at the top only (optional third-party ones may be lazy).
TOP_LEVEL_ONLY = ("estimator", "calibration", "plotting", "diagnostics", "validation", "posterior")
#: No function (or method) anywhere in hf_llc is longer than this, its docstring aside.
MAX_FUNCTION_LINES = 100


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
SHORT_FUNCTIONS = sorted(MODULES)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (never executed, so never imported)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported hf_llc module, line, inside a function) for each import ``module`` runs."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    local = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }
    out = []
    for node in _runtime_nodes(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name``, pkg.
            targets = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names
            ]
        for target in targets:
            while target not in MODULES and "." in target:  # hf_llc.x.attr → hf_llc.x
                target = target.rpartition(".")[0]
            if target in MODULES and target != module:
                out.append((target, node.lineno, id(node) in local))
    return out


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = {m: sorted({t for t, _, _ in _imports(m)}) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_top_level_and_function_local_imports():
    edges = {(t, inside) for t, _, inside in _imports("hf_llc.cli.commands")}
    assert ("hf_llc.estimator", True) in edges and ("hf_llc.sampling", False) in edges
    assert ("hf_llc.posterior", False) in {(t, i) for t, _, i in _imports("hf_llc.estimator")}
    # TYPE_CHECKING imports never run.
    assert "hf_llc.estimator" not in {t for t, _, _ in _imports("hf_llc.plotting")}


def test_no_import_cycle_passes_through_the_estimator_layers():
    ours = {f"hf_llc.{m}" for m in TOP_LEVEL_ONLY}
    assert [c for c in _cycles() if ours & set(c)] == []


def test_no_import_cycles_among_hf_llc_modules():
    assert _cycles() == []


@pytest.mark.parametrize("name", TOP_LEVEL_ONLY)
def test_no_function_local_imports_of_hf_llc_modules(name):
    local = [(t, line) for t, line, inside in _imports(f"hf_llc.{name}") if inside]
    assert local == []


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.end_lineno - first.lineno + 1
    return 0


@pytest.mark.parametrize("name", SHORT_FUNCTIONS)
def test_functions_are_at_most_100_lines(name):
    """Lines from ``def`` to the function's last line, its docstring not counted."""
    tree = ast.parse(MODULES[name].read_text())
    long = [
        (node.name, length)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (length := node.end_lineno - node.lineno + 1 - _docstring_lines(node))
        > MAX_FUNCTION_LINES
    ]
    assert long == []
