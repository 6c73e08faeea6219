"""The trainer's progress as a checkpoint stores it, checked field by field on the way in.

:func:`progress_state` writes it (:meth:`~esper.tolaria.trainer.Trainer.trainer_state`);
:func:`check_progress` reads it back and refuses anything a resume could not
continue from exactly: a wrong type, a count out of range, an epoch that does
not match its records, a number that is not finite. Each refusal is a
:class:`~esper.errors.CheckpointError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from ..validation import check_int, is_real
from .breakers import fresh as fresh_breakers
from .records import EpochRecord, SlotSnapshot
from .runconfig import config_from_record, config_record

if TYPE_CHECKING:
    from ..nn.model import MorphogeneticModel
    from ..optim import OptimizerState
    from .trainer import Trainer

PROGRESS_KEYS = frozenset({"epoch", "records", "tally", "events_written", "global_step",
                           "controller"})
# "commands": present when the run reads signed commands (checked by the command source's
# restore). "config": the run's configuration (esper.tolaria.runconfig), absent from
# checkpoints written before it was kept. "loss_scale": fp16's dynamic loss scale and its
# overflow-free steps, present when the run trains in fp16.
OPTIONAL_KEYS = frozenset({"commands", "config", "loss_scale"})
CONTROLLER_KEYS = frozenset({"accuracies", "germinations", "seeds_created"})
RECORD_KEYS = frozenset({"epoch", "train_loss", "val_accuracy", "baseline_accuracy", "seconds",
                         "slots"})
RECORD_OPTIONAL_KEYS = frozenset({"val_loss", "lr"})  # absent from records of older runs
# Large enough for any run, small enough that a count is never a float in disguise.
MAX_COUNT = 2**53


def _count(where: str, value: object, *, low: int = 0, high: int = MAX_COUNT) -> int:
    return check_int(where, value, minimum=low, maximum=high, error=CheckpointError)


def _number(where: str, value: object, *, low: float = -math.inf, high: float = math.inf,
            finite: bool = True, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not is_real(value):
        raise CheckpointError(f"{where} must be a number, got {value!r}")
    if finite and not math.isfinite(value):
        raise CheckpointError(f"{where} must be finite, got {value!r}")
    if not (math.isnan(value) or low <= value <= high):
        raise CheckpointError(f"{where} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def _keys(where: str, value: object, keys: frozenset[str],
          optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} must be an object, got {type(value).__name__}")
    missing, extra = sorted(keys - set(value)), sorted(set(value) - keys - optional)
    if missing or extra:
        raise CheckpointError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    return value


def _record(where: str, data: object, epoch: int) -> EpochRecord:
    data = _keys(where, data, RECORD_KEYS, RECORD_OPTIONAL_KEYS)
    if _count(f"{where}.epoch", data["epoch"]) != epoch:
        raise CheckpointError(f"{where}.epoch is {data['epoch']}, expected {epoch}: records "
                              "must number the epochs 1, 2, ... in order")
    _number(f"{where}.train_loss", data["train_loss"], finite=False)
    _number(f"{where}.val_accuracy", data["val_accuracy"], low=0.0, high=100.0)
    _number(f"{where}.baseline_accuracy", data["baseline_accuracy"], low=0.0, high=100.0,
            optional=True)
    _number(f"{where}.seconds", data["seconds"], low=0.0)
    _number(f"{where}.val_loss", data.get("val_loss"), finite=False, optional=True)
    _number(f"{where}.lr", data.get("lr"), low=0.0, optional=True)
    if not isinstance(data["slots"], list):
        raise CheckpointError(f"{where}.slots must be a list")
    try:
        slots = tuple(SlotSnapshot.from_dict(s) for s in data["slots"])
    except (TypeError, AttributeError) as error:
        raise CheckpointError(f"{where}.slots: {error}") from error
    return EpochRecord(epoch, data["train_loss"], data["val_accuracy"], slots, data["seconds"],
                       data["baseline_accuracy"], data.get("val_loss"), data.get("lr"))


def progress_state(trainer: Trainer) -> dict[str, Any]:
    """``trainer``'s progress, JSON-ready (weights and optimizer are saved beside it).

    With an external controller it holds ``"commands"``: the read offset and
    the replay memory, so a resumed run refuses commands it already accepted.
    ``"config"`` is the run's configuration
    (:func:`~esper.tolaria.runconfig.config_record`), which ``--resume`` continues.
    """
    state = {"epoch": trainer.epoch, "records": [r.to_dict() for r in trainer.records],
             "tally": dict(trainer.tally), "events_written": trainer.events_written,
             "global_step": trainer.global_step, "controller": trainer.decider.memory_record(),
             "config": config_record(trainer.config)}
    if trainer.decider.command_state is not None:
        state["commands"] = trainer.decider.command_state
    if trainer.loss_scale is not None:
        scale, steps = trainer.loss_scale.tolist()
        state["loss_scale"] = [scale, int(steps)]
    return state


def check_progress(state: object, where: str = "trainer state") -> dict[str, Any]:
    """``state`` if a trainer can resume from it, with its records rebuilt.

    Arguments:
        state: the ``trainer`` section of a checkpoint document.
        where: what to call it in messages (the document's path, say).

    Returns:
        A copy whose ``"records"`` are :class:`EpochRecord` objects and whose
        ``"config"``, when present, is the run's :class:`~esper.tolaria.config.GrowConfig`.

    Raises:
        CheckpointError: naming the first field that is missing, of the wrong
            type, out of range or inconsistent with another.
    """
    state = _keys(where, state, PROGRESS_KEYS, OPTIONAL_KEYS)
    epoch = _count(f"{where}: epoch", state["epoch"])
    records = state["records"]
    if not isinstance(records, list) or len(records) != epoch:
        count = len(records) if isinstance(records, list) else type(records).__name__
        raise CheckpointError(f"{where}: epoch is {epoch} but the records are {count}: one "
                              "record per epoch run")
    rebuilt = [_record(f"{where}: records[{i}]", r, i + 1) for i, r in enumerate(records)]
    _count(f"{where}: events_written", state["events_written"])
    _count(f"{where}: global_step", state["global_step"])
    tally = state["tally"]
    if not isinstance(tally, dict):
        raise CheckpointError(f"{where}: tally must be an object, got {type(tally).__name__}")
    for name, count in tally.items():
        _count(f"{where}: tally[{name!r}]", count)
    controller = _keys(f"{where}: controller", state["controller"], CONTROLLER_KEYS)
    accuracies = controller["accuracies"]
    if not isinstance(accuracies, list):
        raise CheckpointError(f"{where}: controller.accuracies must be a list")
    for i, value in enumerate(accuracies):
        _number(f"{where}: controller.accuracies[{i}]", value, low=0.0, high=100.0)
    germinations = controller["germinations"]
    if not isinstance(germinations, dict):
        raise CheckpointError(f"{where}: controller.germinations must be an object")
    for slot, count in germinations.items():
        _count(f"{where}: controller.germinations[{slot!r}]", count)
    _count(f"{where}: controller.seeds_created", controller["seeds_created"])
    scale = state.get("loss_scale")
    if scale is not None:
        if not isinstance(scale, list) or len(scale) != 2:
            raise CheckpointError(f"{where}: loss_scale must be [scale, steps], got {scale!r}")
        _number(f"{where}: loss_scale[0]", scale[0], low=2.0**-24, high=2.0**64)
        _count(f"{where}: loss_scale[1]", scale[1])
    checked = {**state, "records": rebuilt}
    if "config" in state:
        checked["config"] = config_from_record(state["config"], f"{where}: config")
    return checked


__all__ = ["CONTROLLER_KEYS", "MAX_COUNT", "OPTIONAL_KEYS", "PROGRESS_KEYS", "RECORD_KEYS",
           "check_progress", "progress_state"]


def restore_progress(trainer: Trainer, model: MorphogeneticModel, optimizer: OptimizerState,
                     state: object) -> None:
    """Set ``trainer`` to continue from a checkpoint's model, optimizer and progress.

    Everything is checked first (:func:`check_progress`, then the controller's
    memory), so a refusal changes nothing.

    Raises:
        CheckpointError: the progress is not one a run can continue from.
    """
    checked = check_progress(state)
    trainer.decider.restore(checked)  # the only part that may still refuse
    trainer.model, trainer.optimizer = model, optimizer
    trainer.epoch = int(checked["epoch"])
    trainer.tally = {str(k): int(v) for k, v in checked["tally"].items()}
    trainer.events_written = int(checked["events_written"])
    trainer.global_step = int(checked["global_step"])
    trainer.breakers = fresh_breakers(tuple(model.seed_slots),
                                      {n: s.state.seed_id for n, s in model.seed_slots.items()})
    trainer.records = list(checked["records"])
    if trainer.loss_scale is not None and "loss_scale" in checked:
        trainer.loss_scale.copy_(torch.tensor(checked["loss_scale"], dtype=torch.float32))
