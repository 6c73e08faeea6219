"""The blueprint catalog: named seed factories per host topology.

A blueprint is a :class:`BlueprintSpec`; its factory builds a fresh seed module
for a channel count. Lookups never fall back: an unknown name or a wrong
topology raises ``ValueError`` listing what exists, and :func:`create` checks
the seed it built with :func:`~esper.nn.blueprints.probe.validate_seed`.

Example:
    >>> seed = create("cnn", "norm", 64)
    >>> "norm" in names("cnn")
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ...errors import TopologyMismatchError, UnknownBlueprintError
from ...leyline import TOPOLOGIES, Topology
from ...validation import check_int
from .probe import validate_seed

SeedFactory = Callable[[int], nn.Module]

_CATALOG: dict[str, dict[str, BlueprintSpec]] = {topology: {} for topology in TOPOLOGIES}


@dataclass(frozen=True, slots=True)
class BlueprintSpec:
    """One blueprint.

    Attributes:
        name: identifier, unique per topology (e.g. ``"norm"``).
        topology: the host kind its seeds fit, ``"cnn"`` or ``"transformer"``.
        factory: ``factory(channels) -> nn.Module``, a fresh shape-preserving seed.
        description: one line for humans.
    """

    name: str
    topology: Topology
    factory: SeedFactory
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"BlueprintSpec.name must be a non-empty string, got {self.name!r}")
        _check_topology(self.topology)
        if not callable(self.factory):
            raise TypeError(f"BlueprintSpec.factory must be callable, got {self.factory!r}")


def _check_topology(topology: str) -> dict[str, BlueprintSpec]:
    if topology not in _CATALOG:
        raise ValueError(f"unknown topology {topology!r}; known topologies: {', '.join(_CATALOG)}")
    return _CATALOG[topology]


def register(spec: BlueprintSpec, *, replace: bool = False) -> BlueprintSpec:
    """Add ``spec`` to the catalog.

    Arguments:
        spec: the blueprint.
        replace: allow replacing a blueprint of the same name and topology.

    Returns:
        ``spec`` (so it can be used as the value of an assignment).

    Raises:
        ValueError: if the name is taken for that topology and ``replace`` is false.
    """
    catalog = _check_topology(spec.topology)
    if spec.name in catalog and not replace:
        raise ValueError(f"blueprint {spec.name!r} is already registered for "
                         f"{spec.topology}; pass replace=True to replace it")
    catalog[spec.name] = spec
    return spec


def unregister(topology: str, name: str) -> BlueprintSpec:
    """Remove and return a blueprint (``ValueError`` if absent)."""
    spec = get(topology, name)
    del _CATALOG[topology][name]
    return spec


def get(topology: str, name: str) -> BlueprintSpec:
    """The blueprint ``name`` for ``topology``.

    Raises:
        UnknownBlueprintError: naming the blueprints that exist (a ``ValueError``).
        TopologyMismatchError: ``name`` is registered for the other topology only
            (a ``ValueError``).
    """
    catalog = _check_topology(topology)
    if name in catalog:
        return catalog[name]
    known = f"known {topology} blueprints: {', '.join(catalog) or 'none'}"
    elsewhere = [other for other, specs in _CATALOG.items() if name in specs]
    if elsewhere:
        raise TopologyMismatchError(
            f"unknown {topology} blueprint {name!r} (it is a {' and '.join(elsewhere)} "
            f"blueprint, for the other host topology); {known}: choose one of those")
    raise UnknownBlueprintError(f"unknown {topology} blueprint {name!r}; {known}: choose one "
                                "of those or register a new one with blueprints.register")


def names(topology: str) -> tuple[str, ...]:
    """Names of the blueprints registered for ``topology``, in registration order."""
    return tuple(_check_topology(topology))


def create(topology: str, name: str, channels: int) -> nn.Module:
    """Build a seed of blueprint ``name`` for ``channels`` channels, checked by a shape probe.

    Raises:
        UnknownBlueprintError: no such blueprint (a ``ValueError``).
        TopologyMismatchError: a blueprint of the other topology (a ``ValueError``).
        SeedShapeError: a seed that changes the shape (a ``ValueError``).
        ValueError: bad ``channels``.
        TypeError: if the factory returns something other than an ``nn.Module``.
    """
    spec = get(topology, name)
    check_int("channels", channels, minimum=1)
    seed = spec.factory(channels)
    if not isinstance(seed, nn.Module):
        raise TypeError(f"blueprint {name!r} factory returned {type(seed).__name__}, "
                        "not an nn.Module")
    validate_seed(seed, topology=topology, channels=channels, device="cpu", name=name)
    return seed


__all__ = ["BlueprintSpec", "SeedFactory", "create", "get", "names", "register", "unregister"]
