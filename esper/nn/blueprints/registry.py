"""The blueprint catalog: named seed factories, looked up per feature layout.

A blueprint is a :class:`BlueprintSpec`; it declares the feature layouts its
seeds support and its factory builds a fresh seed module for a channel count.
The catalog is keyed by layout (``"cnn"``, ``"transformer"``, ``"mlp"``): a
spec is listed under every layout it declares, and one name means one spec per
layout. Lookups never fall back: an unknown name, or a blueprint that does not
support the layout, raises ``ValueError`` listing the blueprints that do.
:func:`build` makes an unchecked seed; :func:`create` also checks it with
:func:`~esper.nn.blueprints.probe.validate_seed`.

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
from .probe import LAYOUT_SHAPES, validate_seed

SeedFactory = Callable[[int], nn.Module]

_CATALOG: dict[str, dict[str, BlueprintSpec]] = {layout: {} for layout in TOPOLOGIES}


@dataclass(frozen=True, slots=True)
class BlueprintSpec:
    """One blueprint and the feature layouts its seeds support.

    A layout (a :data:`~esper.leyline.Topology`) is the shape of the features
    at a slot, batch first: ``"cnn"`` ``[B, C, H, W]`` (any memory format),
    ``"transformer"`` ``[B, T, C]`` and ``"mlp"`` ``[B, C]``. A seed must accept
    features of any size of that layout with its channel count C (any batch,
    any H and W, any T) and return a tensor of exactly their shape and dtype.

    Attributes:
        name: identifier, unique per layout (e.g. ``"norm"``).
        layouts: the layouts the seeds support: one layout or a tuple of them,
            stored as a tuple without repeats (``("cnn",)``).
        factory: ``factory(channels) -> nn.Module``, a fresh shape-preserving seed.
        description: one line for humans.
    """

    name: str
    layouts: Topology | tuple[Topology, ...]
    factory: SeedFactory
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"BlueprintSpec.name must be a non-empty string, got {self.name!r}")
        layouts = (self.layouts,) if isinstance(self.layouts, str) else tuple(self.layouts)
        if not layouts:
            raise ValueError(f"blueprint {self.name!r} declares no layout; give at least one "
                             f"of {', '.join(TOPOLOGIES)}")
        for layout in layouts:
            _catalog(layout)
        object.__setattr__(self, "layouts", tuple(dict.fromkeys(layouts)))
        if not callable(self.factory):
            raise TypeError(f"BlueprintSpec.factory must be callable, got {self.factory!r}")


def _catalog(layout: object) -> dict[str, BlueprintSpec]:
    """The blueprints of ``layout``; ``ValueError`` naming the known layouts otherwise."""
    if not isinstance(layout, str) or layout not in _CATALOG:
        known = ", ".join(f"{name} {shape}" for name, shape in LAYOUT_SHAPES.items())
        raise ValueError(f"unknown topology {layout!r} (a feature layout); known layouts: "
                         f"{known}")
    return _CATALOG[layout]


def register(spec: BlueprintSpec, *, replace: bool = False) -> BlueprintSpec:
    """Add ``spec`` to the catalog of every layout it supports (all or none).

    Arguments:
        spec: the blueprint.
        replace: allow replacing a blueprint of the same name in those layouts.

    Returns:
        ``spec`` (so it can be used as the value of an assignment).

    Raises:
        ValueError: if the name is taken in one of its layouts and ``replace`` is false.
    """
    taken = [layout for layout in spec.layouts if spec.name in _catalog(layout)]
    if taken and not replace:
        raise ValueError(f"blueprint {spec.name!r} is already registered for the "
                         f"{', '.join(taken)} layout; pass replace=True to replace it")
    for layout in spec.layouts:
        _catalog(layout)[spec.name] = spec
    return spec


def unregister(layout: str, name: str) -> BlueprintSpec:
    """Remove and return the blueprint ``name`` of ``layout``, from every layout it is in.

    Raises:
        UnknownBlueprintError, TopologyMismatchError: as :func:`get`.
    """
    spec = get(layout, name)
    for catalog in _CATALOG.values():
        if catalog.get(name) is spec:
            del catalog[name]
    return spec


def get(layout: str, name: str) -> BlueprintSpec:
    """The blueprint ``name`` of ``layout``.

    Raises:
        UnknownBlueprintError: no layout has a blueprint ``name``; the message
            lists those of ``layout`` (a ``ValueError``).
        TopologyMismatchError: ``name`` is a blueprint of other layouts only,
            which does not support ``layout``; the message lists the blueprints
            that do (a ``ValueError``).
        ValueError: an unknown layout.
    """
    catalog = _catalog(layout)
    if name in catalog:
        return catalog[name]
    supported = ", ".join(catalog) or "none"
    elsewhere = [other for other, specs in _CATALOG.items() if name in specs]
    if elsewhere:
        raise TopologyMismatchError(
            f"blueprint {name!r} does not support the {layout} layout {LAYOUT_SHAPES[layout]} "
            f"(it is a {' and '.join(elsewhere)} blueprint); the blueprints that support "
            f"{layout}: {supported}: choose one of those")
    raise UnknownBlueprintError(f"unknown {layout} blueprint {name!r} (no layout has one of "
                                f"that name); known {layout} blueprints: {supported}: choose "
                                "one of those or register a new one with blueprints.register")


def names(layout: str) -> tuple[str, ...]:
    """Names of the blueprints that support ``layout``, in registration order."""
    return tuple(_catalog(layout))


def build(layout: str, name: str, channels: int) -> nn.Module:
    """An unchecked seed of blueprint ``name`` for ``channels`` channels of ``layout``.

    Raises:
        UnknownBlueprintError, TopologyMismatchError: as :func:`get`.
        ValueError: bad ``channels``.
        TypeError: if the factory returns something other than an ``nn.Module``.
    """
    spec = get(layout, name)
    check_int("channels", channels, minimum=1)
    seed = spec.factory(channels)
    if not isinstance(seed, nn.Module):
        raise TypeError(f"blueprint {name!r} factory returned {type(seed).__name__}, "
                        "not an nn.Module")
    return seed


def create(layout: str, name: str, channels: int) -> nn.Module:
    """:func:`build`, then the seed checked on the layout's default probe on the CPU.

    Raises:
        UnknownBlueprintError, TopologyMismatchError, ValueError, TypeError: as :func:`build`.
        SeedShapeError: a seed that changes the shape or dtype (a ``ValueError``).
    """
    seed = build(layout, name, channels)
    validate_seed(seed, topology=layout, channels=channels, device="cpu", name=name)
    return seed


__all__ = ["BlueprintSpec", "SeedFactory", "build", "create", "get", "names", "register",
           "unregister"]
