"""The package's layout is its architecture: modules sit on floors, and a module imports only
from its own floor or below, never in a loop. Function-level imports count: one hidden in a
function is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunelab"

# Bottom to top. A module's floor is the first whose prefix it matches.
FLOORS = [
    (
        "vocabulary and leaves",
        ["prunelab.names", "prunelab.errors", "prunelab.paths", "prunelab.redact", "prunelab.plugins"],
    ),
    ("pruning", ["prunelab.pruning"]),
    ("data and models", ["prunelab.data", "prunelab.models"]),
    ("deployment and tracking", ["prunelab.deploy", "prunelab.tracking"]),
    ("the config schema", ["prunelab.config"]),
    ("the experiment", ["prunelab.experiment"]),
    ("analysis", ["prunelab.analysis"]),
    ("entry points", ["prunelab.sweep", "prunelab.cli", "prunelab.__main__"]),
    ("the API", ["prunelab"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.split(".")[0] == "prunelab":
                out.add(target)
    return out


def floor(name: str) -> int:
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(name == p or name.startswith(f"{p}.") for p in prefixes if p != "prunelab") or name == "prunelab":
            return i if name != "prunelab" else len(FLOORS) - 1
    raise AssertionError(f"{name} is on no floor: add it to FLOORS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_is_on_a_floor_and_imports_nothing_above_it(graph):
    upward = [
        f"{m} ({FLOORS[floor(m)][0]}) imports {t} ({FLOORS[floor(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if floor(t) > floor(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back_through_others(graph):
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checks_would_see_a_cycle_and_an_upward_import(tmp_path):
    """The walk finds what it must: a function-level import, and a relative one."""
    (tmp_path / "prunelab" / "pruning").mkdir(parents=True)
    (tmp_path / "prunelab" / "__init__.py").write_text("")
    (tmp_path / "prunelab" / "pruning" / "__init__.py").write_text("")
    (tmp_path / "prunelab" / "pruning" / "a.py").write_text("def f():\n    from ..experiment.runner import run\n")
    (tmp_path / "prunelab" / "pruning" / "b.py").write_text("from . import a\n")
    known = {"prunelab", "prunelab.pruning", "prunelab.pruning.a", "prunelab.pruning.b", "prunelab.experiment.runner"}
    a = imports("prunelab.pruning.a", tmp_path / "prunelab" / "pruning" / "a.py", known)
    b = imports("prunelab.pruning.b", tmp_path / "prunelab" / "pruning" / "b.py", known)
    assert a == {"prunelab.experiment.runner"} and floor("prunelab.experiment.runner") > floor("prunelab.pruning.a")
    assert b == {"prunelab.pruning", "prunelab.pruning.a"}
