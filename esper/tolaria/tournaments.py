"""The trainer's side of tournaments: candidates dropped by the step, winners selected.

The step drops a candidate on the device (its ``live`` entry becomes 0, see
:func:`~esper.tolaria.step.settle_candidates`); :func:`commit_drops` reads the
``live`` buffers once an epoch and commits the drops to the slot states (one
``SEED_PRUNED`` each; a tournament with no candidate left is pruned). When a
tournament's TRAINING dwell ends (:func:`due`), validation scores every
candidate at the probe alpha and :func:`decide` keeps the best one: the losers'
weights leave the model and, with :meth:`~esper.optim.OptimizerState.synced`,
the optimizer; the winner keeps the optimizer state it had as a candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..core.tournament import candidate_id, selection_due
from ..leyline.constants import NO_WINNER
from ..leyline.names import is_stacked, slot_of, unstacked
from ..nn.model import MorphogeneticModel
from ..ops.telemetry import GradientStats
from ..optim import OptimizerState
from .evaluate import Validation


@dataclass
class Decided:
    """What :func:`decide` did: the optimizer state and the outcome of each tournament.

    Attributes:
        optimizer: the state with each winner's buffers handed over (sync it to the model).
        winners: slot -> the winner's score (its probe loss reduction, G2's evidence).
        pruned: slots whose tournament had no candidate with a finite score.
    """

    optimizer: OptimizerState
    winners: dict[str, float] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)


def due(model: MorphogeneticModel) -> dict[str, float]:
    """Slot -> probe alpha, for each tournament to be decided at this epoch's end."""
    return {name: slot.state.gates.probe_alpha for name, slot in model.seed_slots.items()
            if selection_due(slot.state)}


def commit_drops(model: MorphogeneticModel) -> list[str]:
    """Commit the candidates the step dropped (one sync per tournament); the slots pruned
    because no candidate was left."""
    pruned = []
    for name, slot in model.seed_slots.items():
        dropped = slot.dropped_by_step()
        if dropped:
            slot.drop_candidates(dropped)
            if not slot.state.has_seed:
                pruned.append(name)
    return pruned


def decide(model: MorphogeneticModel, optimizer: OptimizerState, validation: Validation,
           gradients: Mapping[str, GradientStats] | None = None) -> Decided:
    """Select the winner of every tournament ``validation`` scored (see the module docstring);
    ``gradients`` holds each candidate's gradient telemetry (``"<slot>#<k>"``), if measured:
    the winner's ratio is then its own, as G2 reads it."""
    decided = Decided(optimizer)
    for name, scores in validation.candidate_reductions().items():
        slot = model.seed_slots[name]
        if not slot.state.in_tournament:  # pruned since it was scored
            continue
        stacked = [n for n, _ in model.named_parameters() if is_stacked(n) and slot_of(n) == name]
        named = [(gradients or {}).get(candidate_id(name, k)) for k in range(len(scores))]
        ratios = [None if g is None else g.ratio for g in named] if any(named) else None
        try:
            state = slot.select(scores, ratios)
        except ValueError as error:
            slot.prune(NO_WINNER, detail=str(error))
            decided.pruned.append(name)
            continue
        assert state.selection is not None
        winner = state.selection.winner
        decided.optimizer = decided.optimizer.handed_over(
            {unstacked(n): (n, winner) for n in stacked})
        decided.winners[name] = scores[winner]
    return decided


__all__ = ["Decided", "commit_drops", "decide", "due"]
