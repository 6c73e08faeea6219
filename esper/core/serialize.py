"""JSON-ready encoding of :class:`SlotState` (for ``state_dict`` and checkpoints).

Decoding is strict: unknown or missing keys, wrong types and bad values raise
``ValueError`` naming the field, and every invariant of the state is checked
again on construction. Nothing here unpickles. The only keys that may be
missing are the fields added after the format was first written
(:data:`ADDED_FIELDS`): documents written before them load with the field's
default; fields removed since (:data:`REMOVED_FIELDS`) are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ..leyline import GateLevel, GateResult, QualityGates, SeedStage, TaskConfig
from .state import SeedMetrics, Selection, SlotState, TransitionRecord, stage_coefficients

# Fields added to a persisted dataclass after documents without them were written
# (such a document loads, and the field takes its default), and fields removed
# since (an older document may still carry them; they are ignored).
ADDED_FIELDS: Mapping[type, frozenset[str]] = MappingProxyType({
    TransitionRecord: frozenset({"detail"}),
    SeedMetrics: frozenset({"probe_loss_reduction", "holding_contribution",
                            "training_fingerprint", "weights_moved"}),
    QualityGates: frozenset({"probe_alpha", "min_probe_loss_reduction", "min_holding_epochs"}),
    SlotState: frozenset({"candidates", "dropped", "selection"}),
})
REMOVED_FIELDS: Mapping[type, frozenset[str]] = MappingProxyType({
    # G2 judged the host's accuracy gain; it now judges the seed's probe (issue 10).
    QualityGates: frozenset({"min_training_improvement"}),
})


def state_to_dict(state: SlotState) -> dict[str, Any]:
    """Encode ``state`` as plain JSON types (an alpha override is not persisted)."""
    if state.alpha_overridden:
        raise ValueError("an alpha-overridden evaluation state is not persisted")
    gate = state.last_gate
    return {
        "slot_id": state.slot_id,
        "channels": state.channels,
        "alpha": state.alpha.tolist(),
        "stage": state.stage.name,
        "blueprint_id": state.blueprint_id,
        "seed_id": state.seed_id,
        "seed_params": state.seed_params,
        "blend_algorithm_id": state.blend_algorithm_id,
        "isolate": state.isolate,
        "alpha_mode": state.alpha_mode,
        "task": dataclasses.asdict(state.task),
        "gates": dataclasses.asdict(state.gates),
        "metrics": dataclasses.asdict(state.metrics),
        "epoch": state.epoch,
        "history": [
            {**dataclasses.asdict(r), "from_stage": r.from_stage.name, "to_stage": r.to_stage.name}
            for r in state.history
        ],
        "transitions": state.transitions,
        "last_gate": None if gate is None else gate.to_dict(),
        "gate_evaluations": state.gate_evaluations,
        "prune_reason": state.prune_reason,
        "candidates": state.candidates,
        "dropped": list(state.dropped),
        "selection": None if state.selection is None else {
            "winner": state.selection.winner, "scores": list(state.selection.scores),
            "epoch": state.selection.epoch,
            "gradient_ratios": list(state.selection.gradient_ratios)},
    }


def _exact_keys(where: str, data: object, names: set[str],
                optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``data`` as a dict with exactly ``names`` as keys, less any of ``optional``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {type(data).__name__}")
    missing, extra = sorted(names - optional - set(data)), sorted(set(data) - names)
    if missing or extra:
        raise ValueError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    return data


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def dataclass_kwargs(where: str, data: object, cls: type) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` in the document ``data``.

    Every field must be there, except those in :data:`ADDED_FIELDS` (they take
    their defaults); those in :data:`REMOVED_FIELDS` may be there and are dropped.

    Raises:
        ValueError: ``data`` is not an object, or keys are missing or unexpected.
    """
    removed = REMOVED_FIELDS.get(cls, frozenset())
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in removed}
    return _exact_keys(where, data, _fields(cls), ADDED_FIELDS.get(cls, frozenset()))


def _gate_from_dict(data: object) -> GateResult:
    data = _exact_keys("last_gate", data, _fields(GateResult))
    return GateResult(
        gate=None if data["gate"] is None else GateLevel[data["gate"]],
        passed=bool(data["passed"]), score=float(data["score"]),
        checks_passed=tuple(map(str, data["checks_passed"])),
        checks_failed=tuple(map(str, data["checks_failed"])),
        message=str(data["message"]),
        target=None if data["target"] is None else SeedStage.parse(data["target"]),
    )


def _record_from_dict(data: object) -> TransitionRecord:
    data = dataclass_kwargs("history record", data, TransitionRecord)
    return TransitionRecord(
        SeedStage.parse(data["from_stage"]), SeedStage.parse(data["to_stage"]),
        int(data["epoch"]), str(data["reason"]), data["seed_id"], int(data["epochs_in_stage"]),
        None if data.get("detail") is None else str(data["detail"]))


def _selection_from_dict(data: object) -> Selection | None:
    if data is None:
        return None
    data = _exact_keys("selection", data, _fields(Selection))
    scores = tuple(None if v is None else float(v) for v in data["scores"])
    ratios = tuple(None if v is None else float(v) for v in data["gradient_ratios"])
    return Selection(int(data["winner"]), scores, int(data["epoch"]), ratios)


def state_from_dict(data: object, *, device: torch.device | str = "cpu") -> SlotState:
    """Decode what :func:`state_to_dict` produced.

    Raises:
        ValueError: the document is not a valid encoded state (the message names the field).
    """
    names = _fields(SlotState) - {"b", "g", "alpha_overridden"}
    data = _exact_keys("slot state", data, names, ADDED_FIELDS[SlotState])
    # A state saved before tournaments holds one seed.
    data = {"candidates": 1, "dropped": [], "selection": None, **data}
    try:
        stage = SeedStage.parse(data["stage"])
        history = tuple(_record_from_dict(r) for r in data["history"])
        task = TaskConfig(**_exact_keys("task", data["task"], _fields(TaskConfig)))
        gates = QualityGates(**dataclass_kwargs("gates", data["gates"], QualityGates))
        metrics = SeedMetrics(**dataclass_kwargs("metrics", data["metrics"], SeedMetrics))
        alpha = torch.tensor(data["alpha"], dtype=torch.float32, device=device)
        _, b, g = stage_coefficients(stage, bool(data["isolate"]))
        scalar = {k: torch.tensor(v, dtype=torch.float32, device=device)
                  for k, v in (("b", b), ("g", g))}
        plain = {k: data[k] for k in names - {"stage", "history", "task", "gates", "metrics",
                                               "alpha", "last_gate", "dropped", "selection"}}
        gate = None if data["last_gate"] is None else _gate_from_dict(data["last_gate"])
        return SlotState(stage=stage, history=history, task=task, gates=gates, metrics=metrics,
                         alpha=alpha, last_gate=gate, dropped=tuple(data["dropped"]),
                         selection=_selection_from_dict(data["selection"]), **scalar, **plain)
    except (TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"malformed slot state: {error}") from error
