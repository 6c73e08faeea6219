"""``graft``: seed slots on any ``nn.Module``, named by module path.

Example:
    >>> import torchvision  # any module will do
    >>> net = torchvision.models.resnet18(num_classes=10)
    >>> model = graft(net, ["layer2", "layer3.0"], example_input=torch.randn(2, 3, 32, 32))
    >>> model.germinate_seed("noop", "s1", slot="layer3.0")
    >>> logits = model(torch.randn(8, 3, 32, 32))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core.state import AlphaMode
from ..leyline import QualityGates, TaskConfig
from .graft_points import GraftPoint, normalize_points
from .model import MorphogeneticModel
from .slot import TelemetryCallback


def graft(model: nn.Module, points: Sequence[str] | Mapping[str, GraftPoint | None], *,
          example_input: Any, task_config: TaskConfig | None = None,
          gates: QualityGates | None = None, alpha_mode: AlphaMode = "scalar",
          device: torch.device | str | None = None, on_telemetry: TelemetryCallback | None = None,
          fast_mode: bool = False) -> MorphogeneticModel:
    """Put a seed slot on the output of each module ``points`` names; the grafted model.

    ``model`` keeps its structure, parameter names (``host.<name>`` in the
    result) and forward: each slot is a forward hook on its module that, inside
    the grafted model's forward, replaces the module's output by the slot's
    (the host's own output, bit for bit, until a seed is blended in). The
    model is run once on ``example_input`` (no gradients, eval mode, modes and
    the CPU random generator restored) to measure each point: its rank gives
    the layout (``[B, C, H, W]`` cnn, ``[B, T, C]`` transformer, ``[B, C]`` mlp),
    and its channels, shape, dtype and memory format are recorded.

    Arguments:
        model: any ``nn.Module``, grafted once.
        points: module paths as ``model.named_modules()`` spells them, each a
            slot of that name; or a mapping path -> :class:`GraftPoint` options.
            No point may lie inside another.
        example_input: a tensor, or a tuple of the forward's positional arguments.
        task_config: lifecycle timing (its topology becomes each point's layout).
        gates: gate thresholds shared by the slots.
        alpha_mode: ``"scalar"`` or ``"channel"`` blending for every slot.
        device: where to move the model, seeds and states (``None``: where the
            model's parameters are); the dry run runs before the move.
        on_telemetry: called with every lifecycle event of every slot.
        fast_mode: skip event delivery.

    Raises:
        UnknownGraftPointError: a path names no submodule (close matches listed).
        NestedGraftPointError: one point inside another.
        GraftOutputError: a point's output is not a tensor and no ``select`` picks one.
        GraftShapeError: a point's features are not of rank 2, 3 or 4.
        GraftCallCountError: a point's module runs other than once per forward.
        AlreadyGraftedError: ``model`` already carries slots.
        ExampleInputError: the model's forward raised on ``example_input``.

    Nothing of ``model`` changes when any of them is raised.
    """
    if example_input is None:
        raise TypeError("graft needs example_input: a tensor (or a tuple of positional "
                        "arguments) the model's forward runs on")
    return MorphogeneticModel(model, device=device, slots=normalize_points(points),
                              task_config=task_config, fast_mode=fast_mode,
                              on_telemetry=on_telemetry, gates=gates, alpha_mode=alpha_mode,
                              example_input=example_input)


__all__ = ["GraftPoint", "graft"]
