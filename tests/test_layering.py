"""The package layering: what each package may import, read from the source (an AST scan).

A package may import only the packages listed for it in ``MAY_IMPORT``, so no
package imports another that imports it back. The scan follows every import,
including those inside functions: a lazy import is still a dependency. The
sources are read as the distribution holds them: ``kernels/`` as ``esper.kernels``,
through the link ``esper/kernels``.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = {"esper.errors", "esper.validation", "esper._version"}
CONTRACTS = BASE | {"esper.leyline"}

# The layering, bottom up; each package's ``__init__`` docstring says the same in words.
MAY_IMPORT: dict[str, set[str]] = {
    "esper.errors": set(),
    "esper._version": set(),
    "esper.validation": {"esper.errors"},
    "esper.leyline": BASE,
    "esper.kernels": set(),
    "esper.core": CONTRACTS,
    "esper.ops": CONTRACTS | {"esper.core", "esper.kernels"},
    "esper.nn": CONTRACTS | {"esper.core", "esper.ops"},
    "esper.optim": CONTRACTS,
    "esper.data": CONTRACTS,
    "esper.tamiyo": CONTRACTS | {"esper.core"},
    "esper.checkpoint": CONTRACTS | {"esper.core", "esper.ops", "esper.nn", "esper.optim"},
    "esper.tolaria": CONTRACTS | {"esper.core", "esper.ops", "esper.nn", "esper.optim",
                                  "esper.data", "esper.tamiyo", "esper.checkpoint",
                                  "esper.kernels"},
    "esper.demo": CONTRACTS | {"esper.nn", "esper.data", "esper.tolaria"},
    "esper.cli": CONTRACTS | {"esper.tolaria", "esper.demo"},
    "esper.__main__": {"esper.cli"},
    "esper.kasmina": {"esper.core", "esper.ops", "esper.nn"},
    "esper": BASE | {"esper.nn", "esper.checkpoint"},  # graft, GraftPoint, save, load: lazily
}
PURE = ("esper.core", "esper.ops", "esper.leyline", "esper.tamiyo")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layering unit of a module: the longest key of ``MAY_IMPORT`` that contains it."""
    for size in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:size])
        if prefix in MAY_IMPORT:
            return prefix
    raise AssertionError(f"{module} belongs to no layer: add it to MAY_IMPORT")


def _imports(path: Path) -> Iterator[str]:
    """Every absolute module name ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _sources() -> list[Path]:
    """Every module under ``esper/``, the linked ``esper/kernels`` followed."""
    walk = os.walk(ROOT / "esper", followlinks=True)
    return sorted(Path(folder, name) for folder, _, names in walk
                  for name in names if name.endswith(".py"))


def _edges() -> dict[str, set[str]]:
    units = {_module_name(p): _unit(_module_name(p)) for p in _sources()}
    edges: dict[str, set[str]] = {unit: set() for unit in units.values()}
    for path in _sources():
        unit = units[_module_name(path)]
        for name in _imports(path):
            target = units.get(name)
            if target is not None and target != unit:
                edges[unit].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between units, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        stack.append(unit)
        for nxt in sorted(edges.get(unit, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[unit] = 2
        return None

    for unit in sorted(edges):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_every_module_belongs_to_a_layer() -> None:
    for path in _sources():
        _unit(_module_name(path))


def test_no_package_imports_one_that_imports_it_back() -> None:
    assert _cycle(_edges()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("unit", sorted(MAY_IMPORT))
def test_each_package_imports_only_the_layers_below_it(unit: str) -> None:
    extra = _edges().get(unit, set()) - MAY_IMPORT[unit]
    assert not extra, f"{unit} imports {sorted(extra)}, outside its layer"


@pytest.mark.parametrize("unit", PURE)
def test_the_pure_layers_never_import_torch_nn(unit: str) -> None:
    offenders = sorted(
        f"{_module_name(path)} imports {name}"
        for path in _sources() if _unit(_module_name(path)) == unit
        for name in _imports(path) if name == "torch.nn" or name.startswith("torch.nn.")
    )
    assert not offenders


@pytest.mark.parametrize("unit", ("esper.leyline", "esper.tamiyo", "esper.errors"))
def test_the_contracts_and_the_controller_never_import_torch(unit: str) -> None:
    offenders = sorted(
        f"{_module_name(path)} imports {name}"
        for path in _sources() if _unit(_module_name(path)) == unit
        for name in _imports(path) if name == "torch" or name.startswith("torch.")
    )
    assert not offenders
