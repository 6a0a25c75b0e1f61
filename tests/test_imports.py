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
        [
            "prunelab.names",
            "prunelab.errors",
            "prunelab.paths",
            "prunelab.redact",
            "prunelab.plugins",
            "prunelab.contracts",
            "prunelab.heap",
        ],
    ),
    ("pruning", ["prunelab.pruning"]),
    ("data and models", ["prunelab.data", "prunelab.models"]),
    ("deployment and tracking", ["prunelab.deploy", "prunelab.tracking"]),
    ("the config schema", ["prunelab.config"]),
    ("the experiment", ["prunelab.experiment"]),
    ("analysis", ["prunelab.analysis"]),
    (
        "entry points",
        [
            "prunelab.sweep",
            "prunelab.cli",
            "prunelab.reproduction",
            "prunelab.reproduce_sweep",
            "prunelab.reproduce",
            "prunelab.__main__",
        ],
    ),
    ("the API", ["prunelab"]),
]


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
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


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` (a directory named ``prunelab``) and the package modules it imports."""
    found = modules(package)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """One line for each import of a module on a higher floor than the importer's."""
    return sorted(
        f"{m} ({FLOORS[floor(m)][0]}) imports {t} ({FLOORS[floor(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if floor(t) > floor(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: each strongly connected component of more than one module, sorted
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_is_on_a_floor_and_imports_nothing_above_it(graph):
    upward = upward_imports(graph)
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back_through_others(graph):
    loops = cycles(graph)
    assert not loops, loops


def test_the_walk_finds_function_level_and_relative_imports(tmp_path):
    """The walk finds what it must: a function-level import, and a relative one."""
    (tmp_path / "prunelab" / "pruning").mkdir(parents=True)
    (tmp_path / "prunelab" / "__init__.py").write_text("")
    (tmp_path / "prunelab" / "pruning" / "__init__.py").write_text("")
    (tmp_path / "prunelab" / "pruning" / "a.py").write_text("def f():\n    from ..experiment.runner import run\n")
    (tmp_path / "prunelab" / "pruning" / "b.py").write_text("from . import a\n")
    known = {"prunelab", "prunelab.pruning", "prunelab.pruning.a", "prunelab.pruning.b", "prunelab.experiment.runner"}
    a = imports("prunelab.pruning.a", tmp_path / "prunelab" / "pruning" / "a.py", known)
    b = imports("prunelab.pruning.b", tmp_path / "prunelab" / "pruning" / "b.py", known)
    assert a == {"prunelab.experiment.runner"}
    assert floor("prunelab.experiment.runner") > floor("prunelab.pruning.a")
    assert b == {"prunelab.pruning", "prunelab.pruning.a"}


def test_the_checks_report_a_cycle_and_an_upward_import(tmp_path):
    """A package with a loop (a -> b -> a, b's half inside a function) and a module on the pruning
    floor importing one on the experiment floor: both checks say so, and name nothing else."""
    files = {
        "__init__.py": "",
        "names.py": "",
        "pruning/__init__.py": "",
        "pruning/a.py": "from . import b\n\n\ndef run():\n    from ..experiment.runner import main\n",
        "pruning/b.py": "from prunelab.names import Metric\n\n\ndef f():\n    from .a import run\n",
        "experiment/__init__.py": "",
        "experiment/runner.py": "",
    }
    for relative, text in files.items():
        (tmp_path / "prunelab" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "prunelab" / relative).write_text(text)
    graph = import_graph(tmp_path / "prunelab")
    assert graph["prunelab.pruning.b"] == {"prunelab.names", "prunelab.pruning.a"}  # downward: not reported
    assert upward_imports(graph) == [
        "prunelab.pruning.a (pruning) imports prunelab.experiment.runner (the experiment)",
    ]
    assert cycles(graph) == [["prunelab.pruning.a", "prunelab.pruning.b"]]
