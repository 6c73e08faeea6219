"""Checkpoints of grafted models: the graft is stored, the base model is the caller's.

A model grafted onto a user's own module (:func:`esper.graft`) has no
``config()`` to rebuild its host from. Its checkpoint stores, in the host
section, ``{"kind": "grafted", "graft": <the graft description>}`` beside
every tensor (the host's weights included: the host trains too), and
loading grafts a freshly built base model the caller supplies the same way
(PEFT's ``from_pretrained(base_model, path)`` pattern): a dry run on zeros of
the recorded example input's shapes measures each point again, and the
measurements must match the stored ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ExampleInputError, GraftMismatchError, GraftPointError
from ..leyline import QualityGates, TaskConfig
from ..nn.graft import graft
from ..nn.graft_description import differences, zero_input
from ..nn.graft_points import GraftPoint
from ..nn.model import MorphogeneticModel
from .document import exact, reading
from .errors import CheckpointError
from .format import SCHEMA_VERSION

GRAFTED = "grafted"
"""The host ``kind`` of a grafted model's checkpoint."""


def host_section(model: MorphogeneticModel, where: Path) -> tuple[dict[str, Any], int | None]:
    """The host section for a grafted model and its schema version (``None``: not grafted).

    Raises:
        CheckpointError: the graft's example input had an argument that is not a
            tensor, so a fresh copy could not be measured again.
    """
    if callable(getattr(model.host, "config", None)):
        return {}, None
    description = model.graft_description()
    if description["example_input"] is None:
        raise CheckpointError(f"{where}: the model was grafted on an example input that is not "
                              "all tensors; graft it on tensors to save it")
    return {"kind": GRAFTED, "graft": description}, SCHEMA_VERSION


def is_grafted(host: dict[str, Any]) -> bool:
    """Whether a checkpoint's host section is a graft's."""
    return host.get("kind") == GRAFTED


def graft_base(base_model: nn.Module, host: dict[str, Any], task: TaskConfig,
               gates: QualityGates, alpha_mode: str, device: torch.device | str | None,
               doc_path: Path) -> MorphogeneticModel:
    """``base_model`` grafted as the checkpoint's host section says.

    Raises:
        CheckpointError: a malformed host section.
        GraftMismatchError: the base model does not fit (a point it lacks, a
            forward that fails on the recorded input, or different measurements);
            the base model is left as it was.
        AlreadyGraftedError: ``base_model`` carries slots already.
    """
    with reading(doc_path, "host"):
        stored = exact(exact(host, {"kind", "graft"}, "host")["graft"],
                       {"alpha_mode", "points", "example_input"}, "graft")
        example = zero_input(stored["example_input"])
        points = {str(info["module"]): GraftPoint(select=info["select"], isolate=info["isolate"])
                  for info in stored["points"].values()}
    try:
        model = graft(base_model, points, example_input=example, task_config=task, gates=gates,
                      alpha_mode=alpha_mode, device=device)  # type: ignore[arg-type]
    except (GraftPointError, ExampleInputError) as error:
        raise GraftMismatchError(f"{doc_path}: {type(base_model).__name__} does not take the "
                                 f"graft saved there: {error}; pass a base model built as the "
                                 "saved one was") from error
    found = differences(stored, model.graft_description())
    if found:
        model.ungraft()
        raise GraftMismatchError(f"{doc_path}: {type(base_model).__name__} does not fit the graft "
                                 f"saved there: {'; '.join(found)}; pass a base model built as "
                                 "the saved one was")
    return model


__all__ = ["GRAFTED", "graft_base", "host_section", "is_grafted"]
