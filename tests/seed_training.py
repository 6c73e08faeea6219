"""A stand-in for the optimizer step that tests driving a lifecycle by hand leave out.

G2 refuses a seed whose weights did not move since it began TRAINING
(``metrics.weights_moved``, :mod:`esper.core.movement`). A test that walks a seed
through its stages with made-up telemetry, without training, calls
:func:`nudge_training_seeds` before each epoch step, as a training epoch would have
moved the weights.
"""

from __future__ import annotations

import torch

from esper.leyline import SeedStage
from esper.nn.model import MorphogeneticModel


def nudge_training_seeds(model: MorphogeneticModel, step: float = 1e-3) -> None:
    """Add ``step`` to every parameter of every TRAINING seed (and its blend gate)."""
    with torch.no_grad():
        for slot in model.seed_slots.values():
            if slot.state.stage == SeedStage.TRAINING:
                for parameter in slot.parameters():
                    parameter.add_(step)
