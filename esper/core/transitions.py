"""How a slot state changes stage: the one move every lifecycle verb ends in.

:func:`enter` moves a state to a stage with the ``(a, b, g)`` coefficients the
stage implies, records the transition in the bounded history and restarts the
stage's clock; :func:`enter_gated` and :func:`enter_pruned` are its two common
forms. The checks every verb runs first (:func:`check_state`,
:func:`check_telemetry`) and the folding of a telemetry record into the
metrics (:func:`observe`) live here too. Everything is pure.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidTransitionError, TelemetryTypeError
from ..leyline import VALID_TRANSITIONS, GateResult, SeedStage, SlotTelemetry, is_valid_transition
from ..leyline.constants import DEFAULT_MAX_HISTORY
from .state import SeedMetrics, SlotState, TransitionRecord, stage_coefficients

_S = SeedStage


def alpha_tensor(state: SlotState, value: float | torch.Tensor) -> torch.Tensor:
    """``value`` as a new float32 alpha tensor shaped and placed like ``state.alpha``."""
    like = state.alpha
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=torch.float32, device=like.device).clone()
    return torch.full(like.shape, float(value), dtype=torch.float32, device=like.device)


def _coefficient(state: SlotState, value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=state.b.device)


def enter(state: SlotState, target: SeedStage, reason: str, **changes: object) -> SlotState:
    """Move to ``target`` with the coefficients it implies and a history record.

    ``changes`` are applied with the move; ``alpha``, ``metrics`` and
    ``detail`` (the record's) are taken out of them first.

    Raises:
        InvalidTransitionError: ``target`` may not follow the current stage.
    """
    if not is_valid_transition(state.stage, target):
        raise InvalidTransitionError(f"invalid transition {state.stage.name} -> {target.name} "
                                     f"(allowed: {allowed(state.stage)})")
    a, b, g = stage_coefficients(target, state.isolate)
    if target not in (SeedStage.GERMINATED, SeedStage.TRAINING):
        changes.setdefault("candidates", 1)  # a tournament never outlives TRAINING
    alpha = changes.pop("alpha", None)
    if alpha is None:
        alpha = state.alpha if a is None else alpha_tensor(state, a)
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


def enter_gated(state: SlotState, target: SeedStage, reason: str | None = None) -> SlotState:
    """Enter TRAINING, BLENDING or HOLDING after its gate (G1, G2, G3) passed.

    Entering BLENDING restarts the alpha ramp and remembers the accuracy it
    starts from; ``reason`` defaults to the gate's name.
    """
    reason = reason or {_S.TRAINING: "g1", _S.BLENDING: "g2", _S.HOLDING: "g3"}[target]
    if target == _S.BLENDING:
        metrics = state.metrics.replace(accuracy_at_blending_start=state.metrics.current_accuracy,
                                        blend_step=0)
        return enter(state, target, reason, metrics=metrics)
    return enter(state, target, reason)


def enter_pruned(state: SlotState, reason: str, detail: str | None = None) -> SlotState:
    """Move a live seed to PRUNED for ``reason`` (its ``detail`` goes on the record)."""
    return enter(state, _S.PRUNED, reason, prune_reason=reason, detail=detail)


def allowed(stage: SeedStage) -> str:
    """The stages that may follow ``stage``, for messages."""
    return ", ".join(s.name for s in sorted(VALID_TRANSITIONS[stage])) or "nothing"


def with_gate(state: SlotState, result: GateResult) -> SlotState:
    """``state`` with ``result`` recorded as its latest gate evaluation."""
    return state.replace(last_gate=result, gate_evaluations=state.gate_evaluations + 1)


def observe(metrics: SeedMetrics, t: SlotTelemetry, *, count_epoch: bool) -> SeedMetrics:
    """Fold one telemetry record into the metrics (non-finite numbers are not kept).

    ``count_epoch``: whether the record closes an epoch, whose clock and
    isolation violations it then counts.
    """
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


def check_telemetry(telemetry: object) -> SlotTelemetry:
    """``telemetry`` if it is a :class:`SlotTelemetry`, else ``TelemetryTypeError``."""
    if not isinstance(telemetry, SlotTelemetry):
        raise TelemetryTypeError(f"telemetry must be a SlotTelemetry, got "
                                 f"{type(telemetry).__name__}: build one with "
                                 "SlotTelemetry(accuracy, ...)")
    return telemetry


def check_state(state: object) -> SlotState:
    """``state`` if the lifecycle may act on it: a :class:`SlotState` without an alpha override.

    Raises:
        TypeError: not a :class:`SlotState`.
        ValueError: an evaluation copy from :meth:`SlotState.with_alpha`.
    """
    if not isinstance(state, SlotState):
        raise TypeError(f"state must be a SlotState, got {type(state).__name__}")
    if state.alpha_overridden:
        raise ValueError(f"slot {state.slot_id!r}: this state carries an alpha override for "
                         "evaluation; apply lifecycle functions to the real state")
    return state
