"""A tournament's pure verbs: drop a candidate, say when to select, select the winner.

A slot germinated with K candidates (:func:`~esper.core.lifecycle.germinate`
with ``candidates=K``) incubates them in GERMINATED and TRAINING. G2 cannot
judge K seeds at once, so a tournament waits at the end of its TRAINING dwell
(G2 fails with ``tournament_undecided``) until :func:`select` names the
winner: from then on the slot holds one seed, which G2 judges as any other.
Candidate ``k`` of seed ``s`` is called :func:`candidate_id` ``(s, k)`` in events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import StageError
from ..leyline import SeedStage
from ..leyline.constants import MAX_CANDIDATES
from ..validation import check_int
from .state import Selection, SlotState
from .transitions import check_state


def check_candidates(candidates: object, name: str = "candidates") -> int:
    """``candidates`` itself if it is a valid candidate count: an int from 1 (one seed, no
    tournament) to :data:`~esper.leyline.constants.MAX_CANDIDATES`.

    Raises:
        TypeError: not an int (a bool is not one).
        ValueError: out of that range.
    """
    return check_int(name, candidates, minimum=1, maximum=MAX_CANDIDATES, type_error=TypeError)


def candidate_id(seed_id: str, index: int) -> str:
    """The name of candidate ``index`` of the tournament germinated as ``seed_id``."""
    return f"{seed_id}#{index}"


def is_candidate_id(seed_id: str | None) -> bool:
    """Whether ``seed_id`` names a tournament's candidate (:func:`candidate_id`)."""
    return seed_id is not None and "#" in seed_id


def live_candidates(state: SlotState) -> tuple[int, ...]:
    """The candidates of ``state``'s tournament not dropped (empty without a tournament)."""
    if not state.in_tournament:
        return ()
    return tuple(k for k in range(state.candidates) if k not in state.dropped)


def selection_due(state: SlotState) -> bool:
    """Whether ``state``'s tournament must be decided before its next epoch step: it is
    in TRAINING and that step ends its dwell (where G2 would judge a single seed)."""
    return (state.in_tournament and state.stage == SeedStage.TRAINING
            and state.metrics.epochs_in_stage + 1 >= state.task.training_dwell)


def _require_tournament(state: SlotState, verb: str) -> None:
    check_state(state)
    if not state.in_tournament:
        raise StageError(f"cannot {verb} in slot {state.slot_id!r}: it is {state.stage.name} "
                         "with no tournament of candidates (germinate with candidates=K >= 2)")


def drop(state: SlotState, indices: Sequence[int]) -> SlotState:
    """``state`` with candidates ``indices`` dropped (their output or gradients stopped
    being finite); dropping every live candidate is left to the caller (prune the slot).

    Raises:
        StageError: no tournament in the slot (a ``ValueError``).
        ValueError: an index that is not a live candidate.
    """
    _require_tournament(state, "drop a candidate")
    live = live_candidates(state)
    unknown = [k for k in indices if k not in live]
    if unknown:
        raise ValueError(f"candidates {unknown} of slot {state.slot_id!r} are not live; live: "
                         f"{list(live)}")
    return state.replace(dropped=(*state.dropped, *sorted(set(indices))))


def winner_of(scores: Sequence[float | None], live: Sequence[int]) -> int | None:
    """The live candidate with the highest finite score (the lowest index on a tie);
    ``None`` when no live candidate has one."""
    ranked = [(score, -k) for k in live
              if (score := scores[k]) is not None and math.isfinite(score)]
    return -max(ranked)[1] if ranked else None


def select(state: SlotState, scores: Sequence[float | None],
           seed_params: int | None = None,
           gradient_ratios: Sequence[float | None] = ()) -> SlotState:
    """End the tournament: the live candidate with the best score wins (:func:`winner_of`).

    The slot keeps its stage and seed id and holds one seed from here on; the
    winner's score becomes the seed's ``probe_loss_reduction`` (G2's evidence).
    The events (:func:`~esper.core.events.events`) are a ``CANDIDATE_SELECTED``
    and one ``SEED_PRUNED`` (reason ``lost_selection``) per other live candidate.

    Arguments:
        state: a slot in a tournament, GERMINATED or TRAINING.
        scores: one per candidate (relative validation-loss reduction at the probe
            alpha, higher is better); a dropped candidate's is ignored.
        seed_params: the winner's parameter count (``None``: the tournament's, unchanged).
        gradient_ratios: each candidate's gradient ratio (empty: not measured); the
            winner's becomes the seed's ``seed_gradient_norm_ratio``, which G2 reads.

    Raises:
        StageError: no tournament in the slot (a ``ValueError``).
        ValueError: not one score (or ratio) per candidate, or no live candidate
            with a finite score (prune the slot instead).
    """
    _require_tournament(state, "select a candidate")
    for what, values in (("scores", scores), ("gradient ratios", gradient_ratios or scores)):
        if len(values) != state.candidates:
            raise ValueError(f"slot {state.slot_id!r} has {state.candidates} candidates, got "
                             f"{len(values)} {what}")
    live = live_candidates(state)
    winner = winner_of(scores, live)
    if winner is None:
        raise ValueError(f"no live candidate of slot {state.slot_id!r} has a finite score "
                         f"(scores {list(scores)}, live {list(live)}): prune the slot")
    kept = _finite(scores, live, state.candidates)
    ratios = _finite(gradient_ratios, live, state.candidates) if gradient_ratios else ()
    metrics = state.metrics.replace(probe_loss_reduction=kept[winner])
    if ratios and ratios[winner] is not None:
        metrics = metrics.replace(seed_gradient_norm_ratio=ratios[winner])
    params = state.seed_params if seed_params is None else check_int("seed_params", seed_params)
    return state.replace(candidates=1, metrics=metrics, seed_params=params,
                         selection=Selection(winner, kept, state.epoch, ratios))


def _finite(values: Sequence[float | None], live: Sequence[int],
            count: int) -> tuple[float | None, ...]:
    """``values`` as floats, ``None`` where a candidate is dropped or a value not finite."""
    return tuple(float(v) if k in live and (v := values[k]) is not None and math.isfinite(v)
                 else None for k in range(count))


__all__ = ["candidate_id", "check_candidates", "drop", "is_candidate_id", "live_candidates",
           "select", "selection_due", "winner_of"]
