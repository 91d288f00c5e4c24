"""The import graph of every Python package, and the size of their modules. Shown by:

    uv run pytest -q tests/test_import_graph.py

Read with `ast` from the source, so every import counts: at module level, inside a function (a lazy
import) and under `if TYPE_CHECKING:`. A cycle, even a lazy one, means two modules that cannot be
read, tested or moved apart. What holds, for the product code of the five packages (their tests
live outside them):

- no cycle between the modules of a package, and none between packages;
- the packages are layers: `neutrino_protocol` imports no other package of ours, the SDK
  (`neutrino`) only `neutrino_protocol`, and a service `neutrino` and `neutrino_protocol` but
  never another service (services talk over the wire, SPEC.md, not through each other's code);
- every module is under `MAX_LINES` lines (CONVENTIONS.md §11: split by responsibility).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Package -> its directory, and the packages of ours it may import.
PACKAGES = {
    "neutrino_protocol": ROOT / "libs/protocol/python/neutrino_protocol",
    "neutrino": ROOT / "libs/sdk-py/neutrino",
    "neutrino_worker": ROOT / "services/worker-py/neutrino_worker",
    "neutrino_gateway": ROOT / "services/gateway-py/neutrino_gateway",
    "neutrino_model_server": ROOT / "services/model-server-py/neutrino_model_server",
}
SERVICE_DEPENDENCIES = {"neutrino", "neutrino_protocol"}
ALLOWED = {
    "neutrino_protocol": set(),
    "neutrino": {"neutrino_protocol"},
    "neutrino_worker": SERVICE_DEPENDENCIES,
    "neutrino_gateway": SERVICE_DEPENDENCIES,
    "neutrino_model_server": SERVICE_DEPENDENCIES,
}
MAX_LINES = 500


def _module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(PACKAGES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Module name -> its file, for every module of every package.
MODULES = {
    _module_name(package, path): path for package, folder in PACKAGES.items() for path in sorted(folder.rglob("*.py"))
}


def _package(module: str) -> str:
    return module.split(".")[0]


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    return _imports_of(module, path.name == "__init__.py", path.read_text(), set(MODULES))


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
    """Module -> the modules of ours it imports (third-party and standard-library imports left out)."""
    return {module: {m for m in _imports(module) if m in MODULES and m != module} for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The groups of nodes that import each other, directly or through others (the strongly
    connected components of more than one node); a graph of a few hundred modules, so by reachability."""
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


def test_every_package_is_read() -> None:
    """The checks below prove nothing about a package the walk does not reach."""
    for package, folder in PACKAGES.items():
        assert (folder / "__init__.py").is_file(), f"{package} moved: update PACKAGES in {Path(__file__).name}"
    per_package = {package: sum(_package(module) == package for module in MODULES) for package in PACKAGES}
    assert all(count >= 3 for count in per_package.values()), per_package
    assert "neutrino.dev.plan" in MODULES  # subpackages too


def test_no_modules_import_each_other() -> None:
    cycles = sorted(sorted(group) for group in _cycles(_graph()))
    assert cycles == [], "modules that import each other (end it by moving what both need into a third):\n" + "\n".join(
        " <-> ".join(group) for group in cycles
    )


def test_no_packages_import_each_other() -> None:
    packages: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module, targets in _graph().items():
        packages[_package(module)] |= {_package(t) for t in targets} - {_package(module)}
    assert sorted(sorted(group) for group in _cycles(packages)) == []


def test_packages_import_only_the_packages_below_them() -> None:
    offenders = {
        module: sorted(
            target
            for target in _imports(module)
            if _package(target) in PACKAGES and _package(target) not in ALLOWED[_package(module)] | {_package(module)}
        )
        for module in MODULES
    }
    found = {module: targets for module, targets in offenders.items() if targets}
    assert found == {}, (
        "imports across the layers (neutrino_protocol <- neutrino <- services; no service imports another):\n"
        + "\n".join(f"{module} imports {', '.join(targets)}" for module, targets in sorted(found.items()))
    )


def test_every_module_is_under_the_line_limit() -> None:
    sizes = {path: len(path.read_text().splitlines()) for path in MODULES.values()}
    over = sorted((lines, path.relative_to(ROOT).as_posix()) for path, lines in sizes.items() if lines >= MAX_LINES)
    assert over == [], f"modules of {MAX_LINES} lines or more (split them by responsibility):\n" + "\n".join(
        f"{path}: {lines} lines" for lines, path in reversed(over)
    )


# -- the checks' own tools --------------------------------------------------------------------


def test_the_cycle_finder_finds_cycles() -> None:
    """The checks above prove nothing if `_cycles` never finds one."""
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
        ("neutrino_worker.logs", "from neutrino import _logs", {"neutrino._logs"}),
    ],
)
def test_relative_lazy_and_dynamic_imports_resolve(module: str, source: str, expected: set[str]) -> None:
    modules = {"neutrino", "neutrino.app", "neutrino.models", "neutrino.dev", "neutrino.dev.plan", "neutrino._logs"}
    assert _imports_of(module, False, source, modules) == expected


def test_a_package_init_resolves_relative_imports_against_itself() -> None:
    assert _imports_of("neutrino.dev", True, "from .plan import Plan", {"neutrino.dev.plan"}) == {"neutrino.dev.plan"}
