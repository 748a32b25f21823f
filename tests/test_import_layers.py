"""The package's import graph: no cycle, and no import from a lower layer to a higher one.

The layers read as the pipeline, from the bottom: names, files, the config and the source
guard; the TensorFlow building blocks; the data; what judges a model; the method and its
engine; the comparison methods; Algorithm 1 in a run directory; many runs and deployment; the
command line. A module may import from its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfaug"
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tfaug.methods", "tfaug.io", "tfaug.config", "tfaug.version", "tfaug.source_guard"),
    ("tfaug.ops", "tfaug.models", "tfaug.losses", "tfaug.metrics"),
    ("tfaug.data",),
    ("tfaug.analysis",),
    ("tfaug.training",),
    ("tfaug.baselines",),
    ("tfaug.runs",),
    ("tfaug.experiments", "tfaug.deploy"),
    ("tfaug.cli", "tfaug.console"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every tfaug module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from tfaug.experiments import plots` imports the module tfaug.experiments.plots
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "tfaug" or name.startswith("tfaug.")}


def import_graph() -> dict[str, set[str]]:
    """Module → the tfaug modules it imports. The package's own ``__init__`` is left out: it
    only re-exports (lazily) what the layers define."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules.pop("tfaug")
    return {
        name: {target for target in imported_modules(path) if target in modules} - {name}
        for name, path in modules.items()
    }


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in import_graph() if layer_of(m) is None]
    assert unplaced == [], f"add these modules to LAYERS: {unplaced}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module to a module of a higher layer."""
    return [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    ]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One ``a -> b -> a`` line per cycle found by a depth-first search."""
    state: dict[str, str] = {}
    found = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_import_goes_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_see_an_upward_import_and_a_cycle():
    """The checks themselves, on a made-up graph with one of each."""
    graph = {
        "tfaug.training.stage": {"tfaug.runs.algorithm"},
        "tfaug.runs.algorithm": {"tfaug.baselines.comparisons"},
        "tfaug.baselines.comparisons": {"tfaug.runs.algorithm"},
    }
    assert upward_imports(graph) == [
        "tfaug.training.stage (layer 4) imports tfaug.runs.algorithm (layer 6)",
        "tfaug.baselines.comparisons (layer 5) imports tfaug.runs.algorithm (layer 6)",
    ]
    assert cycles(graph) == [
        "tfaug.baselines.comparisons -> tfaug.runs.algorithm -> tfaug.baselines.comparisons"
    ]
