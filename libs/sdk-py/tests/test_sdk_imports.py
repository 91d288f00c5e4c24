"""The SDK's import graph: no cycles between its modules, and no import of a service package.

Read with `ast` from the source, so every import counts: at module level, inside a function (a lazy
import) and under `if TYPE_CHECKING:`. A cycle, even a lazy one, means two modules that cannot be
read, tested or moved apart; the services build on the SDK, so the SDK importing one of them would
be a cycle between packages. Run alone: `uv run pytest -q libs/sdk-py/tests/test_sdk_imports.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import neutrino
import pytest

PACKAGE = Path(neutrino.__file__).parent
SERVICES = ("neutrino_gateway", "neutrino_model_server", "neutrino_worker")


def _module_name(path: Path) -> str:
    parts = ["neutrino", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    return _imports_of(_module_name(path), path.name == "__init__.py", path.read_text(), set(MODULES))


def _imports_of(module: str, is_package: bool, source: str, modules: set[str]) -> set[str]:
    """What `source` (module `module`) imports, as absolute names. `from P import x` imports module
    `P.x` when there is one (P's `__init__` runs first, but is not what the code depends on), else P."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _graph() -> dict[str, set[str]]:
    return {module: {m for m in _imports(path) if m in MODULES and m != module} for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The groups of modules that import each other, directly or through others (the strongly
    connected components of more than one module); a graph of a few dozen modules, so by reachability."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        reach[start] = seen
    return {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in graph if m in reach[m]}


# Cycles left to their owners, each with the change that ends it. Do not add to this list.
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_the_sdk_import_graph_has_no_cycles() -> None:
    graph = _graph()
    assert {"neutrino.app", "neutrino.cli", "neutrino.dev.plan"} <= graph.keys()  # the walk found the package
    new = [sorted(group) for group in _cycles(graph) - KNOWN_CYCLES]
    assert new == [], "modules that import each other: " + "; ".join(" <-> ".join(group) for group in new)


def test_the_sdk_imports_no_service() -> None:
    offenders = {
        module: sorted(m for m in _imports(path) if m.split(".")[0] in SERVICES) for module, path in MODULES.items()
    }
    assert {module: found for module, found in offenders.items() if found} == {}


def test_the_cycle_finder_finds_cycles() -> None:
    """The check above proves nothing if `_cycles` never finds one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert _cycles(graph) == {frozenset("abc"), frozenset("de")}
    assert _cycles({"a": {"b"}, "b": set()}) == set()


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("neutrino.app", "from . import models, Thing", {"neutrino", "neutrino.models"}),
        ("neutrino.cli", "from .dev import plan", {"neutrino.dev.plan"}),
        ("neutrino.dev.plan", "from ..models import Model", {"neutrino.models"}),
        ("neutrino.app", "def f():\n    from .models import Model", {"neutrino.models"}),
        ("neutrino.app", "if TYPE_CHECKING:\n    import neutrino_gateway.api", {"neutrino_gateway.api"}),
        ("neutrino.app", "importlib.import_module('neutrino_gateway.x')", {"neutrino_gateway.x"}),
    ],
)
def test_relative_lazy_and_dynamic_imports_resolve(module: str, source: str, expected: set[str]) -> None:
    modules = {"neutrino", "neutrino.app", "neutrino.models", "neutrino.dev", "neutrino.dev.plan"}
    assert _imports_of(module, False, source, modules) == expected


def test_a_package_init_resolves_relative_imports_against_itself() -> None:
    assert _imports_of("neutrino.dev", True, "from .plan import Plan", {"neutrino.dev.plan"}) == {"neutrino.dev.plan"}
