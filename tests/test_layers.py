"""The package's shape: each layer imports only from layers below it, no import circle, no step imports a step.

Imports are read with ``ast`` from the source files (lazy imports inside functions count too), so
the rule holds for every import the code can make, not only for those a test happens to run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "deltaml"

# Lowest first. A module may import a module of a lower rank, or one of the same package (a
# subpackage's own modules may use each other, without circles). ``ml``, ``quality`` and
# ``report`` are one layer of the design, ordered among themselves: quality checks models'
# output and report renders both.
LAYERS: dict[str, int] = {
    "deltaml._version": 0,
    "deltaml.errors": 0,
    "deltaml.columns": 0,
    "deltaml.tasks": 0,
    "deltaml.config": 1,
    "deltaml.io": 2,
    "deltaml.ml": 3,
    "deltaml.quality": 4,
    "deltaml.report": 5,
    "deltaml.steps": 6,
    "deltaml.pipeline": 7,
    "deltaml.cli": 8,
    "deltaml.widgets": 8,
    "deltaml": 9,  # the package root and the re-exports kept at old paths for saved models
}
# Old module paths that saved Spark ML models name: each only re-exports its moved module.
SAVED_MODEL_PATHS = {"cleaning", "encoders", "selection", "windows", "models", "single_node"}
# Modules of deltaml.steps that are not steps: what every step shares, and the list of steps.
STEP_SUPPORT = {"deltaml.steps", "deltaml.steps.base", "deltaml.steps.outputs"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The deltaml modules a module imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # `from deltaml.x import name` names a module only when deltaml.x.name is one.
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("deltaml"):
                yield target


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest prefix listed in :data:`LAYERS`."""
    if module.removeprefix("deltaml.") in SAVED_MODEL_PATHS:
        return "deltaml"
    return max((layer for layer in LAYERS if module == layer or module.startswith(f"{layer}.")), key=len)


def test_every_module_has_a_layer() -> None:
    assert {m: layer_of(m) for m in MODULES if layer_of(m) == "deltaml"} == {
        "deltaml": "deltaml",
        **{f"deltaml.{old}": "deltaml" for old in SAVED_MODEL_PATHS},
    }


def test_each_layer_imports_only_from_layers_below() -> None:
    upward = sorted(
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) != layer_of(module) and LAYERS[layer_of(target)] >= LAYERS[layer_of(module)]
    )
    assert upward == []


def test_the_ground_imports_nothing_from_deltaml() -> None:
    ground = ("deltaml.columns", "deltaml.errors", "deltaml.tasks")
    assert {m: GRAPH[m] for m in ground} == {m: set() for m in ground}


def test_no_step_imports_another_step() -> None:
    steps = {m for m in MODULES if m.startswith("deltaml.steps.") and m not in STEP_SUPPORT}
    assert len(steps) == 8
    crossing = sorted(f"{m} imports {t}" for m in steps for t in GRAPH[m] if t in steps)
    assert crossing == []


def _components() -> list[list[str]]:
    """Strongly connected components of the import graph (Tarjan's algorithm), singletons included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return circles


def _circles() -> list[list[str]]:
    """The import circles: components of more than one module."""
    return [c for c in _components() if len(c) > 1]


def import_levels() -> int:
    """The longest chain of imports, a circle counting as one module (importing nothing from deltaml: level 1)."""
    component_of = {m: i for i, c in enumerate(_components()) for m in c}
    members: dict[int, set[str]] = {}
    for module, i in component_of.items():
        members.setdefault(i, set()).add(module)
    levels: dict[int, int] = {}

    def level(i: int) -> int:
        if i not in levels:
            below = {component_of[t] for m in members[i] for t in GRAPH[m]} - {i}
            levels[i] = 1 + max((level(j) for j in below), default=0)
        return levels[i]

    return max(level(i) for i in members)


def graph_summary() -> str:
    """Modules, import circles and import levels, as the layering issue reported them."""
    return f"modules {len(GRAPH)}, circles {len(_circles())}, import levels {import_levels()}"


def test_no_import_circle() -> None:
    assert _circles() == []


@pytest.mark.parametrize("old", sorted(SAVED_MODEL_PATHS))
def test_old_paths_only_re_export_the_moved_module(old: str) -> None:
    assert GRAPH[f"deltaml.{old}"] == {f"deltaml.ml.{old}"}


def test_the_layer_check_sees_a_violation() -> None:
    # The checks above pass on an empty graph too; this one proves they read real imports.
    assert "deltaml.io.catalog" in GRAPH["deltaml.pipeline.runner"] | GRAPH["deltaml.pipeline.cache"]
    assert LAYERS[layer_of("deltaml.pipeline.runner")] > LAYERS[layer_of("deltaml.io.catalog")]


# What modules outside deltaml.io may import from MLflow: types to annotate and catch, not calls.
MLFLOW_TYPES = ("mlflow.exceptions", "mlflow.entities", "mlflow.tracking")


def test_only_io_talks_to_mlflow_and_delta() -> None:
    talking = []
    for name, path in sorted(MODULES.items()):
        if name == "deltaml.io" or name.startswith("deltaml.io."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module or ""]
            else:
                continue
            for module in imported:
                top = module.split(".")[0]
                if top == "delta" or (top == "mlflow" and not module.startswith(MLFLOW_TYPES)):
                    talking.append(f"{name} imports {module}")
    assert talking == []
