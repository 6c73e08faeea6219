"""JSON-ready encoding of :class:`SlotState` (for ``state_dict`` and checkpoints).

Decoding is strict: unknown or missing keys, wrong types and bad values raise
``ValueError`` naming the field, and every invariant of the state is checked
again on construction. Nothing here unpickles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..leyline import GateLevel, GateResult, QualityGates, SeedStage, TaskConfig
from .state import SeedMetrics, SlotState, TransitionRecord, stage_coefficients

# Fields added to a persisted dataclass after documents without them were written:
# such a document still loads, and the field takes its default.
_ADDED: dict[type, frozenset[str]] = {
    TransitionRecord: frozenset({"detail"}),
    SeedMetrics: frozenset({"probe_loss_reduction"}),
    QualityGates: frozenset({"probe_alpha", "min_probe_loss_reduction"}),
}


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


def _fields_of(where: str, data: object, cls: type) -> dict[str, Any]:
    """The keyword arguments of ``cls`` in ``data``: every field, except that fields
    added after a document was written (listed in :data:`_ADDED`) take their defaults."""
    return _exact_keys(where, data, _fields(cls), _ADDED.get(cls, frozenset()))


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
    data = _fields_of("history record", data, TransitionRecord)
    return TransitionRecord(
        SeedStage.parse(data["from_stage"]), SeedStage.parse(data["to_stage"]),
        int(data["epoch"]), str(data["reason"]), data["seed_id"], int(data["epochs_in_stage"]),
        None if data.get("detail") is None else str(data["detail"]))


def state_from_dict(data: object, *, device: torch.device | str = "cpu") -> SlotState:
    """Decode what :func:`state_to_dict` produced.

    Raises:
        ValueError: the document is not a valid encoded state (the message names the field).
    """
    names = _fields(SlotState) - {"b", "g", "alpha_overridden"}
    data = _exact_keys("slot state", data, names)
    try:
        stage = SeedStage.parse(data["stage"])
        history = tuple(_record_from_dict(r) for r in data["history"])
        task = TaskConfig(**_exact_keys("task", data["task"], _fields(TaskConfig)))
        gates = QualityGates(**_fields_of("gates", data["gates"], QualityGates))
        metrics = SeedMetrics(**_fields_of("metrics", data["metrics"], SeedMetrics))
        alpha = torch.tensor(data["alpha"], dtype=torch.float32, device=device)
        _, b, g = stage_coefficients(stage, bool(data["isolate"]))
        scalar = {k: torch.tensor(v, dtype=torch.float32, device=device)
                  for k, v in (("b", b), ("g", g))}
        plain = {k: data[k] for k in names - {"stage", "history", "task", "gates", "metrics",
                                               "alpha", "last_gate"}}
        gate = None if data["last_gate"] is None else _gate_from_dict(data["last_gate"])
        return SlotState(stage=stage, history=history, task=task, gates=gates, metrics=metrics,
                         alpha=alpha, last_gate=gate, **scalar, **plain)
    except (TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"malformed slot state: {error}") from error
