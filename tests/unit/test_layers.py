"""The layering stays true: no import runs from a lower layer to a higher one, no two modules import
each other (directly or round a longer loop), and no module imports another's private names.

    schemas < eventlog < ledger < projections < workers < gateway < tollgate (the shell)

Imports inside functions and under ``TYPE_CHECKING`` count too: an import moved into a function to
dodge a cycle is still the same dependency.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

repo = Path(__file__).resolve().parents[2]
layers = ("schemas", "eventlog", "ledger", "projections", "workers", "gateway", "tollgate")
rank = {package: index for index, package in enumerate(layers)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in layers for path in sorted((repo / package).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of one of our modules."""
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] in rank]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in rank:
                continue
            names = [alias.name for alias in node.names]
            # "from package import module" imports the module.
            submodules = [f"{node.module}.{name}" for name in names if f"{node.module}.{name}" in modules]
            found += [(sub, [], node.lineno) for sub in submodules]
            found.append((node.module, [n for n in names if f"{node.module}.{n}" not in modules], node.lineno))
    return found


@functools.cache
def _import_table() -> dict[str, tuple[Path, list[tuple[str, list[str], int]]]]:
    """Every module's path and imports, parsed once for the three checks."""
    modules = _modules()
    return {name: (path, _imports(path, modules)) for name, path in modules.items()}


def test_no_import_runs_from_a_lower_layer_to_a_higher_one() -> None:
    upward = []
    for name, (path, imports) in _import_table().items():
        for imported, _, line in imports:
            if rank[imported.split(".")[0]] > rank[name.split(".")[0]]:
                upward.append(f"{path.relative_to(repo)}:{line} imports {imported}")
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_module_imports_a_private_name_of_another() -> None:
    private = []
    for name, (path, imports) in _import_table().items():
        for imported, names, line in imports:
            hidden = [n for n in names if n.startswith("_") and not n.startswith("__") and imported != name]
            if hidden:
                private.append(f"{path.relative_to(repo)}:{line} imports {hidden} from {imported}")
    assert private == [], "\n".join(private)


def test_no_import_cycle_between_modules() -> None:
    table = _import_table()
    modules = {name: path for name, (path, _) in table.items()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (_, imports) in table.items():
        for imported, _, _ in imports:
            # A package's __init__ is imported with any of its modules: edges to it count as to it.
            if imported in modules and imported != name:
                graph[name].add(imported)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    trail: list[str] = []  # the modules on the current path, in order

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target)
        trail.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
