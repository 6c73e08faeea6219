"""Unanimous consensus on an epoch's lifecycle outcome, across the ranks of a run.

At each epoch boundary every rank proposes, for every slot, the state its
lifecycle step would produce (the gates' verdicts) and the controller's
decisions. Each item is encoded as one non-negative int64 (:meth:`Proposal.codes`):

* lifecycle: the proposed stage in the top byte, below it a 56-bit digest of
  the whole proposed state (stage, alpha, metrics, last gate...), so two ranks
  agree only if their states would be identical;
* decisions: 0 for none, else the first action (1 germinate, 2 fossilize,
  3 prune) in the top byte and a digest of the slot's decisions below.

All codes travel in one collective
(:meth:`~esper.tolaria.replicas.Replicas.gather_codes`, a MIN all-reduce
that hands every rank the table of every rank's codes), and :func:`agree`
turns the table into what is applied, the same on every rank:

* a slot's lifecycle step is applied only if every rank proposed the same
  code; otherwise the slot keeps its state for this epoch;
* the controller's decisions are one joint proposal (a germination may count
  on a prune elsewhere, and all are computed on the stepped states), so they
  are applied only if every item, lifecycle and decisions of every slot, is
  unanimous; otherwise none is.

Each disagreeing item is reported with every rank's proposal and the
dissenting ranks (those whose code differs from the most common one; on a tie,
from the lowest rank's). Pure functions; no I/O.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.serialize import state_to_dict
from ..core.state import SlotState
from ..leyline import SeedStage
from ..tamiyo import Decision
from ..tamiyo.decisions import ACTIONS
from .fingerprint import fingerprint

Item = Literal["lifecycle", "decisions"]
_TAG = 56  # bits below the tag byte


def lifecycle_code(state: SlotState) -> int:
    """The proposed stage (top byte) and a digest of the whole proposed state."""
    text = json.dumps(state_to_dict(state), sort_keys=True)
    return (int(state.stage) << _TAG) | fingerprint(text)


def decisions_code(decisions: Sequence[Decision]) -> int:
    """0 for no decision, else the first action (top byte) and a digest of them all."""
    if not decisions:
        return 0
    text = json.dumps([d.to_dict() for d in decisions], sort_keys=True)
    return ((ACTIONS.index(decisions[0].action) + 1) << _TAG) | fingerprint(text)


def describe(item: Item, code: int) -> str:
    """A readable name of a code: the stage, or the action (``"none"`` for no decision)."""
    tag = code >> _TAG
    if item == "lifecycle":
        try:
            return SeedStage(tag).name
        except ValueError:
            return f"?{tag}"
    if code == 0:
        return "none"
    return ACTIONS[tag - 1] if 1 <= tag <= len(ACTIONS) else f"?{tag}"


@dataclass(frozen=True)
class Proposal:
    """What one rank would do at the end of an epoch.

    Attributes:
        states: slot name -> the state its lifecycle step would produce, in slot order.
        decisions: the controller's decisions, computed on ``states``.
    """

    states: Mapping[str, SlotState]
    decisions: tuple[Decision, ...]

    def codes(self) -> list[int]:
        """Lifecycle codes of every slot, then decision codes of every slot (slot order)."""
        slots = list(self.states)
        by_slot = {s: [d for d in self.decisions if d.slot == s] for s in slots}
        strays = [d for d in self.decisions if d.slot not in by_slot]
        if strays:
            raise ValueError(f"decisions for unknown slots {[d.slot for d in strays]}; "
                             f"slots are {slots}")
        return ([lifecycle_code(self.states[s]) for s in slots]
                + [decisions_code(by_slot[s]) for s in slots])


@dataclass(frozen=True)
class Disagreement:
    """One item the ranks did not agree on (nothing of it was applied).

    Attributes:
        item: ``"lifecycle"`` (the slot's gate step) or ``"decisions"`` (the controller's).
        slot: the slot.
        proposals: each rank's proposal, readable (a stage or an action), by rank.
        codes: each rank's code, by rank.
        dissenting: the ranks whose code differs from the most common one.
    """

    item: Item
    slot: str
    proposals: tuple[str, ...]
    codes: tuple[int, ...]
    dissenting: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (proposals keyed by rank)."""
        return {"item": self.item, "slot": self.slot,
                "proposals": {str(rank): text for rank, text in enumerate(self.proposals)},
                "codes": {str(rank): f"{code:016x}" for rank, code in enumerate(self.codes)},
                "dissenting": list(self.dissenting)}


@dataclass(frozen=True)
class Agreement:
    """What every rank applies this epoch (the same on all of them).

    Attributes:
        stepped: the slots whose lifecycle step is applied.
        decisions: the controller decisions to apply (all proposed, or none).
        disagreements: every item the ranks did not agree on.
    """

    stepped: tuple[str, ...]
    decisions: tuple[Decision, ...]
    disagreements: tuple[Disagreement, ...]

    @property
    def unanimous(self) -> bool:
        """Whether every rank proposed exactly the same outcome."""
        return not self.disagreements


def _dissenting(codes: Sequence[int]) -> tuple[int, ...]:
    counts = Counter(codes)
    reference = max(codes, key=lambda c: (counts[c], -codes.index(c)))
    return tuple(rank for rank, code in enumerate(codes) if code != reference)


def agree(proposal: Proposal, table: Sequence[Sequence[int]]) -> Agreement:
    """What to apply, from this rank's proposal and every rank's codes.

    Arguments:
        proposal: this rank's proposal (its decisions are the ones applied).
        table: ``table[r]`` is rank ``r``'s :meth:`Proposal.codes`.

    Raises:
        ValueError: the table is empty, ragged, or of another length than the proposal's codes.
    """
    slots = list(proposal.states)
    width = 2 * len(slots)
    if not table or any(len(row) != width for row in table):
        raise ValueError(f"the consensus table must have one row of {width} codes per rank, "
                         f"got rows of {[len(row) for row in table]}")
    disagreements: list[Disagreement] = []
    stepped: list[str] = []
    for column in range(width):
        item: Item = "lifecycle" if column < len(slots) else "decisions"
        slot = slots[column % len(slots)]
        codes = tuple(int(row[column]) for row in table)
        if len(set(codes)) == 1:
            if item == "lifecycle":
                stepped.append(slot)
            continue
        disagreements.append(Disagreement(item, slot, tuple(describe(item, c) for c in codes),
                                          codes, _dissenting(codes)))
    decisions = proposal.decisions if not disagreements else ()
    return Agreement(tuple(stepped), tuple(decisions), tuple(disagreements))
