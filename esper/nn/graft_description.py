"""A graft written down as JSON types, and the example input it was measured on.

:func:`describe` is what a checkpoint stores so that a fresh copy of the
host can be grafted the same way (:func:`esper.load`): each point's module
path and options, and what the dry run measured there. The example input is
recorded by shape and dtype only (:func:`input_spec`); :func:`zero_input`
rebuilds an input of those shapes for the new dry run, whose measurements are
then compared with the stored ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .graft_points import PointSpec
from .graft_record import as_args


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def input_spec(example_input: Any) -> list[dict[str, Any]] | None:
    """Each positional argument's shape and dtype, or ``None`` if one is not a tensor."""
    args = as_args(example_input)
    if not all(isinstance(arg, Tensor) for arg in args):
        return None
    return [{"shape": list(arg.shape), "dtype": _dtype_name(arg.dtype)} for arg in args]


def zero_input(spec: list[dict[str, Any]],
               device: torch.device | str = "cpu") -> tuple[Tensor, ...]:
    """Zeros of the recorded shapes and dtypes, as positional arguments.

    Raises:
        ValueError: a spec entry that names no shape or no torch dtype.
    """
    args = []
    for entry in spec:
        dtype = getattr(torch, str(entry["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"example input dtype {entry['dtype']!r} is not a torch dtype")
        args.append(torch.zeros([int(n) for n in entry["shape"]], dtype=dtype, device=device))
    return tuple(args)


def describe(points: Mapping[str, PointSpec], slots: Mapping[str, nn.Module],
             alpha_mode: str, example: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The graft as JSON types (see ``MorphogeneticModel.graft_description``)."""
    described = {}
    for name, spec in points.items():
        described[name] = {
            "module": spec.path, "select": spec.select,
            "isolate": slots[name].state.isolate, "layout": spec.layout,
            "channels": spec.channels, "feature_shape": list(spec.feature_shape),
            "dtype": _dtype_name(spec.dtype),
            "memory_format": str(spec.memory_format).removeprefix("torch.")}
    return {"alpha_mode": alpha_mode, "points": described, "example_input": example}


MEASURED = ("layout", "channels", "feature_shape", "dtype", "memory_format")
"""What a fresh dry run must find again at each point for a stored graft to fit."""


def differences(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
    """How a fresh graft's description departs from a stored one (empty: it fits)."""
    found: list[str] = []
    stored_points, fresh_points = stored.get("points", {}), fresh["points"]
    if list(stored_points) != list(fresh_points):
        return [f"points {list(stored_points)} were saved, the base model gives "
                f"{list(fresh_points)}"]
    for name, saved in stored_points.items():
        for field in MEASURED:
            if saved.get(field) != fresh_points[name][field]:
                found.append(f"point {name!r} ({saved.get('module')}): {field} "
                             f"{saved.get(field)!r} saved, {fresh_points[name][field]!r} now")
    return found


__all__ = ["MEASURED", "describe", "differences", "input_spec", "zero_input"]
