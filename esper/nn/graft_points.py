"""Graft points: which module outputs take a seed slot, checked before anything is grafted.

A graft point is a module path as ``model.named_modules()`` spells it
(``"layer3.0"``, ``"transformer.h.2.mlp"``) with its :class:`GraftPoint`
options. :func:`normalize_points` and :func:`check_paths` check what the caller gave;
:mod:`esper.nn.graft_record` runs the dry run that measures each point into a
:class:`PointSpec`; :func:`pick` and :func:`repack` take the features out of a
module's output and put the slot's output back in.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import GraftOutputError, NestedGraftPointError, UnknownGraftPointError
from ..leyline import Topology

LAYOUTS: dict[int, Topology] = {4: "cnn", 3: "transformer", 2: "mlp"}
"""Feature rank -> layout: ``[B, C, H, W]``, ``[B, T, C]``, ``[B, C]``."""


@dataclass(frozen=True, slots=True)
class GraftPoint:
    """How a slot is grafted onto one module's output.

    Attributes:
        select: which element of a tuple or list output (an ``int``) or of a dict
            output (a ``str``) carries the features; ``None``: the output is a tensor.
            The slot's output replaces that element; the rest pass through unchanged.
        isolate: whether the seed's input stays detached from the host while it is
            blended in; ``None``: the layout's default (``cnn`` and ``mlp`` isolated,
            ``transformer`` co-adapting).
    """

    select: int | str | None = None
    isolate: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.select, bool) or not isinstance(self.select, int | str | None):
            raise GraftOutputError(f"GraftPoint.select must be an int (a tuple or list index), "
                                   f"a str (a dict key) or None, got {self.select!r}")
        if self.isolate is not None and not isinstance(self.isolate, bool):
            raise TypeError(f"GraftPoint.isolate must be a bool or None, got {self.isolate!r}")


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One graft point as the dry run measured it.

    Attributes:
        name: the slot's name (the module path, or a built-in host's point name).
        path: the module path the slot's hook sits on.
        select: as :attr:`GraftPoint.select`.
        layout: ``"cnn"``, ``"transformer"`` or ``"mlp"``, by the features' rank.
        channels: dim 1 for ``cnn`` and ``mlp``, the last dim for ``transformer``.
        feature_shape: the features' full shape in the dry run, batch first.
        dtype: the features' dtype.
        memory_format: ``channels_last`` or ``contiguous_format`` (4-D features).
        isolate: as :attr:`GraftPoint.isolate`.
    """

    name: str
    path: str
    select: int | str | None
    layout: Topology
    channels: int
    feature_shape: tuple[int, ...]
    dtype: torch.dtype
    memory_format: torch.memory_format
    isolate: bool | None = None

    @property
    def channel_dim(self) -> int:
        """The dimension that holds the channels."""
        return -1 if self.layout == "transformer" else 1


Points = dict[str, tuple[str, GraftPoint]]
"""Slot name -> (module path, options), in the order given."""


def normalize_points(points: Sequence[str] | Mapping[str, GraftPoint | None]
                     ) -> dict[str, GraftPoint]:
    """Module path -> options, from a sequence of paths or a mapping (``None``: defaults).

    Raises:
        TypeError: ``points`` is a string, or holds something other than paths and options.
        UnknownGraftPointError: no point, or a path twice.
    """
    if isinstance(points, str):
        raise TypeError(f"points must be a sequence of module names or a mapping, got the "
                        f"string {points!r}: write [{points!r}]")
    pairs = (list(points.items()) if isinstance(points, Mapping)
             else [(path, None) for path in points])
    paths = [path for path, _ in pairs]
    if not paths or len(set(paths)) != len(paths):
        raise UnknownGraftPointError(f"graft points must name at least one module, each once; "
                                     f"got {paths}")
    normalized: dict[str, GraftPoint] = {}
    for path, options in pairs:
        if not isinstance(path, str):
            raise TypeError(f"a graft point is a module name (a str), got {path!r}")
        if options is not None and not isinstance(options, GraftPoint):
            raise TypeError(f"graft point {path!r}: options must be a GraftPoint, got {options!r}")
        normalized[path] = options if options is not None else GraftPoint()
    return normalized


def check_paths(host: nn.Module, paths: Sequence[str]) -> None:
    """Every path names a submodule of ``host``, none inside another.

    Raises:
        UnknownGraftPointError: a path names no submodule (close matches listed).
        NestedGraftPointError: one point's module lies inside another's.
    """
    names = [name for name, _ in host.named_modules() if name]
    known = set(names)
    for path in paths:
        if path not in known:
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
            hint = f"close matches: {close}" if close else f"its submodules start {names[:8]}"
            raise UnknownGraftPointError(
                f"graft point {path!r} names no submodule of {type(host).__name__}; {hint}: "
                "name a module as model.named_modules() spells it")
    for outer in paths:
        for inner in paths:
            if inner.startswith(outer + "."):
                raise NestedGraftPointError(
                    f"graft points {outer!r} and {inner!r} nest: module {inner!r} lies inside "
                    f"{outer!r}, so its slot would run inside the other's features; graft one "
                    "of them")


def describe_output(output: Any) -> str:
    """A short description of a module output, for error messages."""
    if isinstance(output, tuple | list):
        inner = ", ".join(type(item).__name__ for item in output[:6])
        return f"{type(output).__name__} of ({inner}{', ...' if len(output) > 6 else ''})"
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {list(output)[:8]}"
    return type(output).__name__


def pick(output: Any, select: int | str | None, path: str) -> Tensor:
    """The features in a module's ``output``: itself, or its element ``select``.

    Raises:
        GraftOutputError: the output (or the element) is not a tensor, or ``select``
            fits no element (a ``TypeError`` and a ``ValueError``).
    """
    if select is None:
        if isinstance(output, Tensor):
            return output
        raise GraftOutputError(
            f"module {path!r} returns a {describe_output(output)}, not a tensor: pass "
            f"GraftPoint(select=...) naming the element that carries the features (an index "
            "of a tuple or list, a key of a dict)")
    if isinstance(output, tuple | list) and isinstance(select, int):
        found = -len(output) <= select < len(output)
    else:
        found = isinstance(output, Mapping) and isinstance(select, str) and select in output
    if not found:
        raise GraftOutputError(f"GraftPoint(select={select!r}) fits no element of module "
                               f"{path!r}'s output, a {describe_output(output)}: select an "
                               "index of a tuple or list, or a key of a dict, that it holds")
    features = output[select]
    if not isinstance(features, Tensor):
        raise GraftOutputError(f"element {select!r} of module {path!r}'s output is a "
                               f"{type(features).__name__}, not a tensor: select the features")
    return features


def repack(output: Any, select: int | str | None, features: Tensor) -> Any:
    """``output`` with the element ``select`` replaced by ``features`` (or ``features``)."""
    if select is None:
        return features
    if isinstance(output, list):
        return [features if i == _index(select, len(output)) else item
                for i, item in enumerate(output)]
    if isinstance(output, tuple):
        items = [features if i == _index(select, len(output)) else item
                 for i, item in enumerate(output)]
        return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)
    if type(output) is dict:
        return {**output, select: features}
    replaced = copy.copy(output)
    replaced[select] = features
    return replaced


def _index(select: int | str, length: int) -> int:
    assert isinstance(select, int)
    return select % length


def memory_format_of(features: Tensor) -> torch.memory_format:
    """``channels_last`` for 4-D features laid out so (and not also contiguous); else
    ``contiguous_format``."""
    if (features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last)
            and not features.is_contiguous()):
        return torch.channels_last
    return torch.contiguous_format


__all__ = ["LAYOUTS", "GraftPoint", "PointSpec", "Points", "check_paths", "describe_output",
           "memory_format_of", "normalize_points", "pick", "repack"]
