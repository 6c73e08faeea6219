"""One epoch of lifecycle mechanics, stage by stage: the tables :func:`run_epoch` dispatches on.

:func:`~esper.core.lifecycle.step` is the public verb: it checks its
arguments, counts the epoch and calls :func:`run_epoch`. Everything is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..leyline import SeedStage, SlotTelemetry
from ..leyline.constants import NON_FINITE
from . import gates as G
from .schedule import alpha_at
from .state import SeedMetrics, SlotState
from .transitions import alpha_tensor, enter, enter_gated, enter_pruned, observe, with_gate

_S = SeedStage


def run_epoch(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    """The state after one epoch in its stage, ``telemetry`` measured during it.

    A stage without a seed moves on mechanically. A seeded stage first folds
    the telemetry into the metrics; a FOSSILIZED seed then rests, a live seed
    with non-finite telemetry is pruned (``"non_finite"``), and any other runs
    its stage's step.
    """
    mechanical = _MECHANICAL.get(state.stage)
    if mechanical is not None:
        return mechanical(state)
    state = state.replace(metrics=observe(state.metrics, telemetry, count_epoch=True))
    if state.stage == _S.FOSSILIZED:
        return state
    if not telemetry.is_finite:
        return enter_pruned(state, NON_FINITE)
    return _SEEDED[state.stage](state, telemetry)


def _embargo(state: SlotState) -> SlotState:
    state = enter(state, _S.EMBARGOED, "embargo")
    no_embargo = state.task.embargo_epochs == 0
    return enter(state, _S.RESETTING, "embargo_over") if no_embargo else state


def _embargoed(state: SlotState) -> SlotState:
    metrics = state.metrics
    state = state.replace(metrics=metrics.replace(epochs_in_stage=metrics.epochs_in_stage + 1))
    done = state.metrics.epochs_in_stage >= state.task.embargo_epochs
    return enter(state, _S.RESETTING, "embargo_over") if done else state


def _reset(state: SlotState) -> SlotState:
    return enter(state, _S.DORMANT, "reset", blueprint_id=None, seed_id=None, seed_params=0,
                 metrics=SeedMetrics(), prune_reason=None, last_gate=None)


def _germinated(state: SlotState, _t: SlotTelemetry) -> SlotState:
    result = G.g1_germinated(state)
    return enter_gated(with_gate(state, result), _S.TRAINING)


def _training(state: SlotState, _t: SlotTelemetry) -> SlotState:
    if state.metrics.epochs_in_stage < state.task.training_dwell:
        return state
    result = G.g2_ready_to_blend(state)
    state = with_gate(state, result)
    return enter_gated(state, _S.BLENDING) if result.passed else state


def _ramp(state: SlotState) -> SlotState:
    metrics = state.metrics
    steps = state.task.blending_steps
    if metrics.blend_step >= steps:
        return state
    blend_step = metrics.blend_step + 1
    value = alpha_at(state.blend_algorithm_id, blend_step, steps)
    alpha = torch.maximum(state.alpha, alpha_tensor(state, value))  # monotone, even after a set
    return state.replace(alpha=alpha, metrics=metrics.replace(blend_step=blend_step))


def _blending(state: SlotState, _t: SlotTelemetry) -> SlotState:
    state = _ramp(state)
    result = G.g3_blend_complete(state)
    state = with_gate(state, result)
    return enter_gated(state, _S.HOLDING) if result.passed else state


def _record_holding(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    """Keep the epoch's counterfactual for G5 if it was measured at alpha 1.0 everywhere."""
    contribution = telemetry.counterfactual_contribution
    if contribution is None or not math.isfinite(contribution):
        return state
    if not bool(state.alpha.min() >= 1.0):
        return state
    return state.replace(metrics=state.metrics.replace(holding_contribution=contribution))


def _holding(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    state = _record_holding(state, telemetry)  # before the ramp: alpha as it was measured
    state = _ramp(state)
    contribution = telemetry.counterfactual_contribution
    if contribution is not None and contribution < 0:
        return enter_pruned(state, "negative_counterfactual")
    if state.metrics.epochs_in_stage >= state.task.holding_timeout:
        return enter_pruned(state, "holding_timeout")
    return state


# Stages without a seed: what an epoch does to them, telemetry unread.
_MECHANICAL: dict[SeedStage, Callable[[SlotState], SlotState]] = {
    _S.UNKNOWN: lambda state: enter(state, _S.DORMANT, "initialize"),
    _S.DORMANT: lambda state: state,
    _S.PRUNED: _embargo,
    _S.EMBARGOED: _embargoed,
    _S.RESETTING: _reset,
}
# Live seeds: their stage's step, after the telemetry is observed.
_SEEDED: dict[SeedStage, Callable[[SlotState, SlotTelemetry], SlotState]] = {
    _S.GERMINATED: _germinated,
    _S.TRAINING: _training,
    _S.BLENDING: _blending,
    _S.HOLDING: _holding,
}
