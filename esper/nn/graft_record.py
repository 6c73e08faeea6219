"""The graft's dry run: each point's features measured once, before anything is grafted.

:func:`resolve_points` checks what the caller named; :func:`record_points`
runs the model once on the example input (no gradients, eval mode, the CPU
random generator and every module's mode restored) with a recording hook on
each point, and turns what each point's module returned into a
:class:`~esper.nn.graft_points.PointSpec`: layout by rank, channels, shape,
dtype and memory format. Nothing of the model changes.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import (
    ExampleInputError,
    GraftCallCountError,
    GraftOutputError,
    GraftShapeError,
    UnknownSlotError,
    describe,
)
from ..leyline import TaskConfig, Topology
from .graft_hooks import check_not_grafted
from .graft_points import (
    LAYOUTS,
    GraftPoint,
    Points,
    PointSpec,
    check_paths,
    memory_format_of,
    normalize_points,
    pick,
)


def resolve_points(host: nn.Module, slots: Sequence[str] | Mapping[str, GraftPoint | None],
                   named: Mapping[str, str] | None) -> Points:
    """Slot name -> (module path, options), every path checked against ``host``.

    Arguments:
        host: the module the slots graft onto.
        slots: slot names of ``named`` (a sequence), or module paths (a mapping,
            or a sequence when ``named`` is ``None``).
        named: a built-in host's point name -> module path, or ``None``.

    Raises:
        UnknownSlotError: a name ``named`` does not hold, or one twice (a ``ValueError``).
        UnknownGraftPointError, NestedGraftPointError: see :func:`check_paths`.
        AlreadyGraftedError: ``host`` already carries slots (a ``RuntimeError``).
    """
    if named is not None and not isinstance(slots, Mapping):
        if isinstance(slots, str):
            raise TypeError(f"slots must be a sequence of names, got the string {slots!r}")
        unknown = [name for name in slots if name not in named]
        if unknown or len(set(slots)) != len(slots):
            problem = f"unknown {unknown}" if unknown else f"duplicates in {list(slots)}"
            raise UnknownSlotError(f"bad slots: {problem}; this host's injection points are "
                                   f"{list(named)}: choose slots among them, each once")
        points = {name: (named[name], GraftPoint()) for name in slots}
    else:
        points = {path: (path, options) for path, options in normalize_points(slots).items()}
    check_not_grafted(host)
    check_paths(host, [path for path, _ in points.values()])
    return points


def as_args(example_input: Any) -> tuple[Any, ...]:
    """An example input as positional arguments: a tuple is the arguments, anything else one."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def record_points(host: nn.Module, points: Points, example_input: Any) -> dict[str, PointSpec]:
    """Run ``host`` once on ``example_input`` and measure every point; forward order.

    Raises:
        ExampleInputError: the model's own forward raised (its exception chained;
            a ``RuntimeError``).
        GraftCallCountError: a point's module ran other than exactly once.
        GraftOutputError: a point's output is not a tensor and no ``select`` picks one.
        GraftShapeError: features of a rank no layout has (not 2, 3 or 4).
    """
    outputs = _run(host, {path for path, _ in points.values()}, as_args(example_input))
    by_path = {path: name for name, (path, _) in points.items()}
    specs: dict[str, PointSpec] = {}
    for path in sorted(by_path, key=lambda p: outputs[p][0] if outputs[p] else -1):
        name = by_path[path]
        calls = outputs[path]
        if len(calls) != 1:
            where = "never runs in the forward" if not calls else f"runs {len(calls)} times"
            raise GraftCallCountError(f"module {path!r} {where} on the example input; a slot "
                                      "goes on a module that runs exactly once per forward")
        specs[name] = _spec(name, path, points[name][1], calls[0][1])
    return specs


def _run(host: nn.Module, paths: set[str], args: tuple[Any, ...]) -> dict[str, list[Any]]:
    """Path -> [(call order, output)] of the model's forward on ``args``; nothing changes."""
    order: list[int] = [0]
    outputs: dict[str, list[Any]] = {path: [] for path in paths}

    def recorder(path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs[path].append((order[0], output))
            order[0] += 1
        return hook

    modes = {module: module.training for module in host.modules()}
    handles = [host.get_submodule(path).register_forward_hook(recorder(path)) for path in paths]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            host.eval()
            host(*args)
    except Exception as error:
        raise ExampleInputError(
            f"{type(host).__name__}'s forward raised on example_input: {describe(error)}; "
            "pass an input the model runs on (a tensor, or a tuple of its positional "
            "arguments); nothing was grafted") from error
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return outputs


def _spec(name: str, path: str, options: GraftPoint, output: Any) -> PointSpec:
    """The measured point (see :func:`record_points` for what is refused)."""
    features = pick(output, options.select, path)
    if not features.is_floating_point():
        raise GraftOutputError(f"module {path!r} returns {features.dtype} features: a slot "
                               "blends floating-point features; graft a module after the "
                               "embedding or cast")
    layout = LAYOUTS.get(features.dim())
    if layout is None:
        raise GraftShapeError(
            f"module {path!r} returns features of shape {tuple(features.shape)}: a slot takes "
            "[B, C] (mlp), [B, T, C] (transformer) or [B, C, H, W] (cnn) features; graft a "
            "module whose output has one of those ranks")
    channels = features.shape[-1 if layout == "transformer" else 1]
    return PointSpec(name=name, path=path, select=options.select, layout=layout,
                     channels=int(channels), feature_shape=tuple(features.shape),
                     dtype=features.dtype, memory_format=memory_format_of(features),
                     isolate=options.isolate)


def device_of(host: nn.Module) -> torch.device:
    """Where the host's first parameter (or buffer) lives; the CPU for a module without any."""
    tensor = next(host.parameters(), None)
    tensor = tensor if tensor is not None else next(host.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def task_for(task: TaskConfig | None, layout: Topology) -> TaskConfig:
    """The task timing of a slot on ``layout`` features (its topology is the layout)."""
    if task is None:
        return TaskConfig(topology=layout)
    return task if task.topology == layout else dataclasses.replace(task, topology=layout)


def takes_one_input(host: nn.Module) -> bool:
    """Whether the host's forward takes exactly one positional argument (no ``*args``)."""
    try:
        parameters = inspect.signature(host.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) == 1


__all__ = ["as_args", "device_of", "record_points", "resolve_points", "takes_one_input",
           "task_for"]
