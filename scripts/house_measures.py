"""The measures of issue 14 for digest/ and workers/: lines per module, the longest functions,
and import cycles, counting imports inside functions too.

Usage: python scripts/house_measures.py [ROOT]   (ROOT: the checkout, default this one)

Exits 1 when a module passes 500 lines, a function 80 lines, or modules import each other in a
circle. `from package import submodule` counts as importing the submodule only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([node.module] if node.module else [])])
            submodules = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(submodules)
            if base in modules and len(submodules) < len(node.names):
                found.add(base)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def main(root: Path) -> int:
    paths = sorted(p for folder in ("digest", "workers") for p in (root / folder).rglob("*.py"))
    modules = {module_name(root, p): p for p in paths}
    bad = False
    print("lines  module")
    for name, path in modules.items():
        lines = len(path.read_text().splitlines())
        bad |= lines > MAX_MODULE_LINES
        print(f"{lines:5d}  {name}{'  <- over' if lines > MAX_MODULE_LINES else ''}")
    functions = [
        (node.end_lineno - node.lineno + 1, f"{name}.{node.name}")
        for name, path in modules.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]
    print("\nlines  longest functions")
    for lines, name in sorted(functions, reverse=True)[:8]:
        print(f"{lines:5d}  {name}{'  <- over' if lines > MAX_FUNCTION_LINES else ''}")
    bad |= any(lines > MAX_FUNCTION_LINES for lines, _ in functions)
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    circles = cycles(graph)
    print("\nimport cycles:", "none" if not circles else "")
    for circle in circles:
        print("  " + " <-> ".join(circle))
    return 1 if bad or circles else 0


if __name__ == "__main__":
    sys.exit(
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    )
