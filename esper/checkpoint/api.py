"""``esper.save`` and ``esper.load``: a grafted model's checkpoint in one call each.

Example:
    >>> model = esper.graft(net, ["layer3.0"], example_input=x)
    >>> esper.save(model, "runs/ckpt")
    >>> model = esper.load(build_net(), "runs/ckpt")   # a freshly built base model
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.model import MorphogeneticModel
from .load import load_checkpoint
from .save import save_checkpoint


def save(model: MorphogeneticModel, directory: str | os.PathLike[str], *,
         trainer_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a grafted model or one on a built-in host) as a new checkpoint version.

    Stores every tensor (the host's weights too: the host trains), the slot
    states, the seeds' blueprints and gates, and for a grafted model the graft
    itself (points, options, what the dry run measured, the example input's
    shapes and dtypes). See :func:`~esper.checkpoint.save_checkpoint` for the
    optimizer state and crash consistency.

    Returns:
        The checkpoint root.
    """
    return save_checkpoint(directory, model=model, trainer_state=trainer_state)


def load(base_model: nn.Module | None, directory: str | os.PathLike[str], *,
         device: torch.device | str | None = None) -> MorphogeneticModel:
    """The model saved in ``directory``, grafted onto ``base_model``.

    Arguments:
        base_model: a freshly built copy of the module that was grafted (it is
            grafted and takes the saved weights; it is left as it was when
            loading fails); ``None`` for a built-in host, which rebuilds itself.
        directory: a checkpoint root :func:`save` wrote.
        device: where the model goes (``None``: where ``base_model`` is).

    Raises:
        GraftMismatchError: ``base_model`` does not fit the saved graft.
        CheckpointError: anything missing, malformed or inconsistent.
    """
    return load_checkpoint(directory, base_model=base_model, device=device).model


__all__ = ["load", "save"]
