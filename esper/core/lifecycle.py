"""The pure lifecycle: every function takes a state and returns a new one.

Nothing here mutates, emits or performs I/O. The shell applies these outside
the compiled graph once per epoch (or on an explicit request) and turns the
difference between two states into events with :func:`events`.

Example (DORMANT to FOSSILIZED)::

    state = SlotState.dormant("mid", channels=64, task=TaskConfig(max_epochs=5))
    state = germinate(state, "norm", "seed-1")
    for accuracy in (50.0, 51.0, 52.0, 53.0, 54.0, 55.0, 56.0, 57.0):
        state = step(state, SlotTelemetry(accuracy, seed_gradient_norm_ratio=0.5,
                                          probe_loss_reduction=0.01))
    # HOLDING at alpha 1.0: an epoch whose counterfactual step records for G5.
    state = step(state, SlotTelemetry(58.0, counterfactual_contribution=2.0))
    state, result = fossilize(state, SlotTelemetry(58.0, counterfactual_contribution=2.0))
"""

from __future__ import annotations

import math

import torch

from ..errors import (
    FossilizedSeedError,
    InvalidTransitionError,
    NoLiveSeedError,
    SlotOccupiedError,
    StageError,
    TelemetryTypeError,
)
from ..leyline import (
    VALID_TRANSITIONS,
    GateResult,
    SeedStage,
    SlotTelemetry,
    is_live,
    is_valid_transition,
)
from ..leyline.constants import BLEND_ALGORITHMS, DEFAULT_BLEND_ALGORITHM, DEFAULT_MAX_HISTORY
from ..validation import check_int
from . import gates as G
from .alpha import check_alpha
from .schedule import alpha_at
from .state import SeedMetrics, SlotState, TransitionRecord, stage_coefficients

_S = SeedStage


# --------------------------------------------------------------------------- helpers


def _alpha_tensor(state: SlotState, value: float | torch.Tensor) -> torch.Tensor:
    like = state.alpha
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=torch.float32, device=like.device).clone()
    return torch.full(like.shape, float(value), dtype=torch.float32, device=like.device)


def _coefficient(state: SlotState, value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=state.b.device)


def _enter(state: SlotState, target: SeedStage, reason: str, **changes: object) -> SlotState:
    """Move to ``target`` with the coefficients it implies and a history record."""
    if not is_valid_transition(state.stage, target):
        raise InvalidTransitionError(f"invalid transition {state.stage.name} -> {target.name} "
                                     f"(allowed: {_allowed(state.stage)})")
    a, b, g = stage_coefficients(target, state.isolate)
    alpha = changes.pop("alpha", None)
    if alpha is None:
        alpha = state.alpha if a is None else _alpha_tensor(state, a)
    metrics = changes.pop("metrics", state.metrics)
    assert isinstance(metrics, SeedMetrics)
    seed_id = changes.get("seed_id") or state.seed_id  # germination brings the new id
    detail = changes.pop("detail", None)
    assert detail is None or isinstance(detail, str)
    record = TransitionRecord(state.stage, target, state.epoch, reason,
                              seed_id, metrics.epochs_in_stage, detail)
    metrics = metrics.entering_stage()
    if metrics.holding_contribution is not None:  # a HOLDING measurement ends with HOLDING
        metrics = metrics.replace(holding_contribution=None)
    return state.replace(
        stage=target, alpha=alpha, b=_coefficient(state, b), g=_coefficient(state, g),
        metrics=metrics, history=(*state.history, record)[-DEFAULT_MAX_HISTORY:],
        transitions=state.transitions + 1, **changes,
    )


def _allowed(stage: SeedStage) -> str:
    """The stages that may follow ``stage``, for messages."""
    return ", ".join(s.name for s in sorted(VALID_TRANSITIONS[stage])) or "nothing"


def _with_gate(state: SlotState, result: GateResult) -> SlotState:
    return state.replace(last_gate=result, gate_evaluations=state.gate_evaluations + 1)


def _observe(metrics: SeedMetrics, t: SlotTelemetry, *, count_epoch: bool) -> SeedMetrics:
    """Fold one telemetry record into the metrics (non-finite numbers are not kept)."""
    def finite(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    accuracy = finite(t.accuracy)
    counterfactual = finite(t.counterfactual_contribution)
    ratio = finite(t.seed_gradient_norm_ratio)
    probe = t.probe_loss_reduction
    best = metrics.best_accuracy
    if accuracy is not None:
        best = accuracy if best is None else max(best, accuracy)
    return metrics.replace(
        epochs_total=metrics.epochs_total + count_epoch,
        epochs_in_stage=metrics.epochs_in_stage + count_epoch,
        accuracy_at_germination=(metrics.accuracy_at_germination
                                 if metrics.accuracy_at_germination is not None else accuracy),
        accuracy_at_stage_start=(metrics.accuracy_at_stage_start
                                 if metrics.accuracy_at_stage_start is not None else accuracy),
        current_accuracy=accuracy if accuracy is not None else metrics.current_accuracy,
        best_accuracy=best,
        counterfactual_contribution=(counterfactual if counterfactual is not None
                                     else metrics.counterfactual_contribution),
        seed_gradient_norm_ratio=ratio if ratio is not None else metrics.seed_gradient_norm_ratio,
        # -inf is evidence (a blown-up seed), NaN is none
        probe_loss_reduction=(probe if probe is not None and probe == probe
                              else metrics.probe_loss_reduction),
        isolation_violations=metrics.isolation_violations
        + (t.isolation_violations if count_epoch else 0),
    )


def _check_telemetry(telemetry: object) -> SlotTelemetry:
    if not isinstance(telemetry, SlotTelemetry):
        raise TelemetryTypeError(f"telemetry must be a SlotTelemetry, got "
                                 f"{type(telemetry).__name__}: build one with "
                                 "SlotTelemetry(accuracy, ...)")
    return telemetry


def _check_state(state: object) -> SlotState:
    if not isinstance(state, SlotState):
        raise TypeError(f"state must be a SlotState, got {type(state).__name__}")
    if state.alpha_overridden:
        raise ValueError(f"slot {state.slot_id!r}: this state carries an alpha override for "
                         "evaluation; apply lifecycle functions to the real state")
    return state


# --------------------------------------------------------------------------- requests


def germinate(
    state: SlotState,
    blueprint_id: str,
    seed_id: str,
    *,
    blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
    seed_params: int = 0,
) -> SlotState:
    """Plant a seed in a DORMANT slot (gate G0).

    Arguments:
        state: a DORMANT slot.
        blueprint_id: which blueprint the seed was built from.
        seed_id: a name for this seed, unique in the run.
        blend_algorithm_id: ``"linear"``, ``"sigmoid"`` or ``"gated"``.
        seed_params: the seed's parameter count (reported in events).

    Returns:
        The GERMINATED state.

    Raises:
        SlotOccupiedError: the slot is not DORMANT (a ``RuntimeError``).
        ValueError: a missing id, an unknown blend algorithm or a negative count.
    """
    _check_state(state)
    if state.stage != _S.DORMANT:
        raise SlotOccupiedError(_occupied_message(state))
    result = G.g0_identity(blueprint_id, seed_id)
    if not result.passed:
        raise ValueError(f"cannot germinate in {state.slot_id!r}: {result.message}")
    if blend_algorithm_id not in BLEND_ALGORITHMS:
        raise ValueError(f"unknown blend algorithm {blend_algorithm_id!r}; "
                         f"known: {', '.join(BLEND_ALGORITHMS)}")
    check_int("seed_params", seed_params, minimum=0)
    state = _with_gate(state, result)
    return _enter(state, _S.GERMINATED, "germinate", blueprint_id=blueprint_id, seed_id=seed_id,
                  blend_algorithm_id=blend_algorithm_id, seed_params=seed_params,
                  metrics=SeedMetrics(), prune_reason=None)


def _occupied_message(state: SlotState) -> str:
    """Why ``state`` cannot take a seed now, and what to do about it."""
    where = f"slot {state.slot_id!r} is {state.stage.name}, not DORMANT"
    if state.stage == _S.FOSSILIZED:
        return (f"{where}: it holds the fossilized seed {state.seed_id!r} for good; "
                "germinate in another slot")
    if is_live(state.stage):
        return (f"{where}: it holds the seed {state.seed_id!r}; prune it first "
                "(prune_seed(slot=...)) and step epochs until the slot is DORMANT again")
    return (f"{where}: it is on its way back from a pruned seed; step epochs until it is "
            "DORMANT again")


def prune(state: SlotState, reason: str, detail: str | None = None) -> SlotState:
    """Remove the live seed: the slot moves to PRUNED and then rests in embargo.

    Arguments:
        state: a slot with a live seed.
        reason: why, a short tag (``"manual"``, ``"exception"``...).
        detail: what went wrong, in words (an exception's message); carried on
            the SEED_PRUNED event.

    Raises:
        FossilizedSeedError: the seed is FOSSILIZED (permanent; a ``ValueError``).
        NoLiveSeedError: the slot holds no live seed (a ``ValueError``).
        ValueError: ``reason`` is empty.
    """
    _check_state(state)
    if not isinstance(reason, str) or not reason:
        raise ValueError(f"prune needs a non-empty reason, got {reason!r}")
    if detail is not None and not isinstance(detail, str):
        raise TypeError(f"prune's detail must be a string or None, got {detail!r}")
    if state.stage == _S.FOSSILIZED:
        raise FossilizedSeedError(
            f"seed {state.seed_id!r} in {state.slot_id!r} is FOSSILIZED and cannot be pruned: "
            "fossilization is permanent; leave it, and grow in another slot")
    if not is_live(state.stage):
        raise NoLiveSeedError(f"slot {state.slot_id!r} is {state.stage.name}: there is no live "
                              "seed to prune; nothing needs doing")
    return _enter(state, _S.PRUNED, reason, prune_reason=reason, detail=detail)


cull = prune  # the older revision's name


def fossilize(state: SlotState, telemetry: SlotTelemetry) -> tuple[SlotState, GateResult]:
    """Make a HOLDING seed permanent if G5 passes (a=1, b=0, g=0).

    G5 judges the HOLDING validation :func:`step` recorded: at least
    ``gates.min_holding_epochs`` epochs in HOLDING with the counterfactual
    measured there at alpha 1.0 (``metrics.holding_contribution``). A seed that
    entered HOLDING in this epoch's step cannot fossilize yet. The
    ``telemetry`` given here is folded into the metrics as the latest reading
    and must be finite; its counterfactual is not what G5 judges.

    Returns the state unchanged but for the recorded gate when G5 fails.
    """
    _check_state(state)
    _check_telemetry(telemetry)
    if state.stage != _S.HOLDING:
        return state, GateResult.refused(
            _S.FOSSILIZED, "not_in_holding",
            f"fossilize needs a HOLDING seed; {state.slot_id!r} is {state.stage.name}")
    state = state.replace(metrics=_observe(state.metrics, telemetry, count_epoch=False))
    result = G.g5_contribution(state, telemetry)
    state = _with_gate(state, result)
    if not result.passed:
        return state, result
    return _enter(state, _S.FOSSILIZED, "fossilize"), result


_GATED_ADVANCES = {
    (_S.GERMINATED, _S.TRAINING): G.g1_germinated,
    (_S.TRAINING, _S.BLENDING): G.g2_ready_to_blend,
    (_S.BLENDING, _S.HOLDING): G.g3_blend_complete,
}


def advance(
    state: SlotState, target: SeedStage, telemetry: SlotTelemetry
) -> tuple[SlotState, GateResult]:
    """An explicit request to move to ``target`` through its gate.

    The telemetry's readings (accuracy, counterfactual, gradient ratio) are
    taken as the latest measurements; epochs and violations are counted only by
    :func:`step`. Out-of-order targets, mechanical stages (embargo, reset) and
    pruning are refused with a failed result naming the reason, and the state
    is returned unchanged. A failed gate is recorded in ``state.last_gate``.

    Raises:
        TypeError: ``state`` or ``telemetry`` has the wrong type.
        ValueError: ``target`` names no stage.
    """
    _check_state(state)
    _check_telemetry(telemetry)
    target = SeedStage.parse(target)
    source = state.stage
    if not is_valid_transition(source, target):
        return state, GateResult.refused(
            target, "out_of_order",
            f"{source.name} -> {target.name} is not a valid transition "
            f"(allowed: {_allowed(source)}): request one of those")
    if target == _S.FOSSILIZED:
        return fossilize(state, telemetry)
    if target == _S.PRUNED:
        return state, GateResult.refused(target, "use_prune", "pruning takes prune(state, reason)")
    gate = _GATED_ADVANCES.get((source, target))
    if gate is not None and not telemetry.is_finite:
        return state, GateResult.refused(target, "non_finite",
                                         "telemetry is not finite: the seed cannot advance on it")
    if gate is None:
        return state, GateResult.refused(
            target, "mechanical",
            f"{source.name} -> {target.name} happens in step() or germinate(), not on request")
    state = state.replace(metrics=_observe(state.metrics, telemetry, count_epoch=False))
    result = gate(state)
    state = _with_gate(state, result)
    return (_enter_gated(state, target) if result.passed else state), result


def _enter_gated(state: SlotState, target: SeedStage, reason: str | None = None) -> SlotState:
    reason = reason or {_S.TRAINING: "g1", _S.BLENDING: "g2", _S.HOLDING: "g3"}[target]
    if target == _S.BLENDING:
        metrics = state.metrics.replace(accuracy_at_blending_start=state.metrics.current_accuracy,
                                        blend_step=0)
        return _enter(state, target, reason, metrics=metrics)
    return _enter(state, target, reason)


# --------------------------------------------------------------------------- one epoch


def step(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    """One epoch of lifecycle mechanics.

    ``telemetry`` holds this epoch's measurements, taken under ``state`` (the
    state before this step); call it once per epoch.

    * GERMINATED -> TRAINING (G1) on the first step.
    * TRAINING -> BLENDING once the training dwell is done and G2 passes.
    * BLENDING: alpha follows the schedule; -> HOLDING when G3 passes. The ramp
      keeps going in HOLDING until alpha reaches exactly 1.0.
    * HOLDING: when alpha was 1.0 everywhere for the epoch and its
      counterfactual is finite, that counterfactual is recorded as
      ``metrics.holding_contribution``, the HOLDING validation G5 judges
      (:func:`fossilize`). HOLDING never fossilizes by itself; it is pruned on
      timeout (``"holding_timeout"``) or a negative counterfactual
      (``"negative_counterfactual"``). HOLDING never returns to BLENDING.
    * PRUNED -> EMBARGOED -> (``embargo_epochs``) -> RESETTING -> DORMANT.
    * A non-finite telemetry record prunes a live seed (``"non_finite"``).

    Raises:
        TypeError: ``state`` or ``telemetry`` has the wrong type.
    """
    _check_state(state)
    _check_telemetry(telemetry)
    state = state.replace(epoch=state.epoch + 1)
    stage = state.stage
    if stage == _S.UNKNOWN:
        return _enter(state, _S.DORMANT, "initialize")
    if stage == _S.DORMANT:
        return state
    if stage == _S.PRUNED:
        state = _enter(state, _S.EMBARGOED, "embargo")
        no_embargo = state.task.embargo_epochs == 0
        return _enter(state, _S.RESETTING, "embargo_over") if no_embargo else state
    if stage == _S.EMBARGOED:
        state = _tick(state)
        done = state.metrics.epochs_in_stage >= state.task.embargo_epochs
        return _enter(state, _S.RESETTING, "embargo_over") if done else state
    if stage == _S.RESETTING:
        return _enter(state, _S.DORMANT, "reset", blueprint_id=None, seed_id=None, seed_params=0,
                      metrics=SeedMetrics(), prune_reason=None, last_gate=None)
    state = state.replace(metrics=_observe(state.metrics, telemetry, count_epoch=True))
    if stage == _S.FOSSILIZED:
        return state
    if not telemetry.is_finite:
        return prune(state, "non_finite")
    return _STEPS[stage](state, telemetry)


def _tick(state: SlotState) -> SlotState:
    metrics = state.metrics
    return state.replace(metrics=metrics.replace(epochs_in_stage=metrics.epochs_in_stage + 1))


def _step_germinated(state: SlotState, _t: SlotTelemetry) -> SlotState:
    result = G.g1_germinated(state)
    return _enter_gated(_with_gate(state, result), _S.TRAINING)


def _step_training(state: SlotState, _t: SlotTelemetry) -> SlotState:
    if state.metrics.epochs_in_stage < state.task.training_dwell:
        return state
    result = G.g2_ready_to_blend(state)
    state = _with_gate(state, result)
    return _enter_gated(state, _S.BLENDING) if result.passed else state


def _ramp(state: SlotState) -> SlotState:
    metrics = state.metrics
    steps = state.task.blending_steps
    if metrics.blend_step >= steps:
        return state
    blend_step = metrics.blend_step + 1
    value = alpha_at(state.blend_algorithm_id, blend_step, steps)
    alpha = torch.maximum(state.alpha, _alpha_tensor(state, value))  # monotone, even after a set
    return state.replace(alpha=alpha, metrics=metrics.replace(blend_step=blend_step))


def _step_blending(state: SlotState, _t: SlotTelemetry) -> SlotState:
    state = _ramp(state)
    result = G.g3_blend_complete(state)
    state = _with_gate(state, result)
    return _enter_gated(state, _S.HOLDING) if result.passed else state


def _record_holding(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    """Keep the epoch's counterfactual for G5 if it was measured at alpha 1.0 everywhere."""
    contribution = telemetry.counterfactual_contribution
    if contribution is None or not math.isfinite(contribution):
        return state
    if not bool(state.alpha.min() >= 1.0):
        return state
    return state.replace(metrics=state.metrics.replace(holding_contribution=contribution))


def _step_holding(state: SlotState, telemetry: SlotTelemetry) -> SlotState:
    state = _record_holding(state, telemetry)  # before the ramp: alpha as it was measured
    state = _ramp(state)
    contribution = telemetry.counterfactual_contribution
    if contribution is not None and contribution < 0:
        return prune(state, "negative_counterfactual")
    if state.metrics.epochs_in_stage >= state.task.holding_timeout:
        return prune(state, "holding_timeout")
    return state


_STEPS = {
    _S.GERMINATED: _step_germinated,
    _S.TRAINING: _step_training,
    _S.BLENDING: _step_blending,
    _S.HOLDING: _step_holding,
}


# --------------------------------------------------------------------------- tools


def transition(state: SlotState, target: SeedStage) -> SlotState:
    """Move to ``target`` without gates, with the coefficients the stage implies.

    For tools and tests. Only valid transitions are allowed; a seed enters a
    slot only through :func:`germinate`.

    Raises:
        InvalidTransitionError: an invalid transition, or DORMANT -> GERMINATED
            (a ``ValueError``).
        ValueError: ``target`` names no stage.
    """
    _check_state(state)
    target = SeedStage.parse(target)
    if state.stage == _S.DORMANT and target == _S.GERMINATED:
        raise InvalidTransitionError("a seed enters a slot only through germinate(state, "
                                     "blueprint_id, seed_id)")
    if not is_valid_transition(state.stage, target):
        raise InvalidTransitionError(f"invalid transition {state.stage.name} -> {target.name} "
                                     f"(allowed: {_allowed(state.stage)}): request one of those")
    if target == _S.PRUNED:
        return prune(state, "transition")
    if target == _S.DORMANT:
        return _enter(state, target, "transition", blueprint_id=None, seed_id=None,
                      seed_params=0, metrics=SeedMetrics(), prune_reason=None, last_gate=None)
    if target == _S.BLENDING and state.stage == _S.TRAINING:
        return _enter_gated(state, target, "transition")
    return _enter(state, target, "transition")


def set_alpha(state: SlotState, value: float | torch.Tensor) -> SlotState:
    """Set alpha directly while the seed is BLENDING or HOLDING.

    ``value`` is a number (scalar mode) or a tensor: 0-d in scalar mode,
    exactly ``channels`` entries in channel mode. It must be finite and in
    [0, 1] (:func:`~esper.core.alpha.check_alpha`); a value outside is refused,
    never clamped.

    Raises:
        StageError: another stage (a ``ValueError``).
        AlphaShapeError: a wrong shape or dtype (a ``ValueError``).
        AlphaValueError: a value outside [0, 1] or non-finite (a ``ValueError``).
        TypeError: ``value`` is neither a number nor a tensor.
    """
    _check_state(state)
    if state.stage not in (_S.BLENDING, _S.HOLDING):
        raise StageError(f"alpha is fixed by the stage in {state.stage.name}; set_alpha needs "
                         "a BLENDING or HOLDING seed")
    alpha = check_alpha(value, where=f"slot {state.slot_id!r}", channels=state.channels,
                        mode=state.alpha_mode)
    return state.replace(alpha=_alpha_tensor(state, alpha))
