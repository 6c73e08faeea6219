"""Events implied by the difference between two states of one slot (pure)."""

from __future__ import annotations

from ..leyline import EventType, SeedStage, TelemetryEvent
from ..leyline.constants import LOST_SELECTION, NON_FINITE
from .movement import FROZEN_HINT, became_frozen, frozen_message
from .state import SlotState, TransitionRecord
from .tournament import candidate_id


def _outcome(after: SlotState, record: TransitionRecord) -> dict[str, object]:
    m = after.metrics
    return {
        "blueprint_id": after.blueprint_id,
        "seed_id": record.seed_id,
        "improvement": m.improvement,
        "blending_delta": m.blending_delta,
        "counterfactual": m.counterfactual_contribution,
        "epochs_total": m.epochs_total,
        "epochs_in_stage": record.epochs_in_stage,
    }


def _record_events(after: SlotState, record: TransitionRecord) -> list[TelemetryEvent]:
    def event(kind: EventType, payload: dict[str, object]) -> TelemetryEvent:
        return TelemetryEvent(kind, after.slot_id, record.seed_id, record.epoch, payload)

    found = []
    if record.to_stage == SeedStage.GERMINATED:
        found.append(event(EventType.SEED_GERMINATED, {
            "blueprint_id": after.blueprint_id, "seed_id": record.seed_id,
            "params": after.seed_params}))
    found.append(event(EventType.SEED_STAGE_CHANGED, {
        "from": record.from_stage.name, "to": record.to_stage.name, "reason": record.reason}))
    if record.to_stage == SeedStage.FOSSILIZED:
        found.append(event(EventType.SEED_FOSSILIZED,
                           {**_outcome(after, record), "params_added": after.seed_params}))
    elif record.to_stage == SeedStage.PRUNED:
        found.append(event(EventType.SEED_PRUNED, {**_outcome(after, record),
                                                   "reason": record.reason,
                                                   "detail": record.detail, "scores": None}))
    return found


def _frozen_event(after: SlotState) -> TelemetryEvent:
    return TelemetryEvent(EventType.SEED_FROZEN, after.slot_id, after.seed_id, after.epoch, {
        "slot": after.slot_id, "seed_id": after.seed_id, "blueprint_id": after.blueprint_id,
        "params": after.seed_params, "detail": frozen_message(after), "hint": FROZEN_HINT})


def _candidate_pruned(after: SlotState, index: int, reason: str, detail: str,
                      scores: list[float | None] | None) -> TelemetryEvent:
    assert after.seed_id is not None
    m = after.metrics
    return TelemetryEvent(EventType.SEED_PRUNED, after.slot_id, candidate_id(after.seed_id, index),
                          after.epoch, {
                              "reason": reason, "blueprint_id": after.blueprint_id,
                              "seed_id": candidate_id(after.seed_id, index),
                              "improvement": m.improvement, "blending_delta": 0.0,
                              "counterfactual": None, "epochs_total": m.epochs_total,
                              "epochs_in_stage": m.epochs_in_stage, "detail": detail,
                              "scores": scores})


def _tournament_events(before: SlotState, after: SlotState) -> list[TelemetryEvent]:
    """Candidates newly dropped, then the selection and its losers (one slot, one seed)."""
    if after.seed_id != before.seed_id or after.seed_id is None:
        return []
    found = [_candidate_pruned(after, k, NON_FINITE, "its output or gradients were not finite; "
                               "the other candidates go on", None)
             for k in after.dropped[len(before.dropped):]]
    selection = after.selection
    if selection is not None and before.selection is None:
        scores = list(selection.scores)
        found.append(TelemetryEvent(EventType.CANDIDATE_SELECTED, after.slot_id, after.seed_id,
                                    after.epoch, {
                                        "blueprint_id": after.blueprint_id,
                                        "seed_id": candidate_id(after.seed_id, selection.winner),
                                        "winner": selection.winner, "candidates": len(scores),
                                        "scores": scores,
                                        "gradient_ratios": list(selection.gradient_ratios)}))
        found.extend(_candidate_pruned(
            after, k, LOST_SELECTION, f"candidate {selection.winner} scored higher", scores)
            for k in range(len(scores)) if k != selection.winner and k not in after.dropped)
    return found


def events(before: SlotState, after: SlotState) -> tuple[TelemetryEvent, ...]:
    """The events that going from ``before`` to ``after`` implies, in order.

    SEED_FROZEN comes first where the seed was just found not to have trained
    (see :mod:`esper.core.movement`), then a gate evaluation (it caused what
    follows), then for each new transition record: SEED_GERMINATED (on
    germination), SEED_STAGE_CHANGED, and SEED_FOSSILIZED or SEED_PRUNED where
    the stage calls for it.

    Raises:
        ValueError: the states belong to different slots or ``after`` is older.
    """
    if before.slot_id != after.slot_id:
        raise ValueError(f"states of different slots: {before.slot_id!r} and {after.slot_id!r}")
    new_records = after.transitions - before.transitions
    new_gates = after.gate_evaluations - before.gate_evaluations
    if new_records < 0 or new_gates < 0:
        raise ValueError("'after' is older than 'before'")
    found: list[TelemetryEvent] = []
    if became_frozen(before, after):
        found.append(_frozen_event(after))
    if new_gates and after.last_gate is not None:
        gate = after.last_gate.to_dict()
        seed = after.seed_id if after.seed_id is not None else before.seed_id
        found.append(TelemetryEvent(EventType.SEED_GATE_EVALUATED, after.slot_id, seed,
                                    after.epoch, gate))
    found.extend(_tournament_events(before, after))
    records = after.history[len(after.history) - min(new_records, len(after.history)):]
    for record in records:
        found.extend(_record_events(after, record))
    return tuple(found)
