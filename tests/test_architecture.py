"""The engine's house rules, read from its import graph: strict layers, no cycles, no Streamlit.

Every import of an engine module counts, at module level or inside a function: a function-level import is still a
dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "dpo_engine"

# Bottom to top; a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("errors", "paths", "files", "timestamps", "progress", "launch_guard", "job_directory"),
    ("data",),
    ("models",),
    ("margins",),
    ("selection",),
    ("losses",),
    ("training",),
    ("runs",),
    ("evaluation",),
    ("rounds",),
    ("arena",),
    ("cli",),
    ("jobs", "demo"),
)
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ENGINE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The engine modules ``path`` imports (``from dpo_engine.x import y`` counts ``dpo_engine.x.y`` if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("dpo_engine"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpo_engine"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known)
    return {name for name in found if name in known and name != "dpo_engine"}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:
        return -1  # the package's own __init__
    if parts[1] not in LAYER_OF:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {Path(__file__).name}")
    return LAYER_OF[parts[1]]


def import_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    return {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_module_is_in_a_layer():
    for module in engine_modules():
        layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # A package's __init__ re-exports its submodules: edges into a package from its own members are not design
    # dependencies, so they are left out (Python imports the package first anyway).
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]) if target in stack else target)
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("path", sorted(ENGINE.rglob("*.py")), ids=lambda p: str(p.relative_to(ENGINE)))
def test_the_engine_never_imports_streamlit(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.split(".")[0] == "streamlit" for name in names)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule itself: a data module importing training is caught (so the tests above can fail)."""
    fake = tmp_path / "dpo_engine" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from dpo_engine.training.trainer import train\n")
    found = imported_modules(fake, {"dpo_engine.training.trainer"})
    assert found == {"dpo_engine.training.trainer"}
    assert layer("dpo_engine.training.trainer") > layer("dpo_engine.data.bad")
