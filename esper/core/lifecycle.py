"""The pure lifecycle's public verbs: every function takes a state and returns a new one.

The verbs check their arguments and decide; how a state enters a stage lives
in :mod:`esper.core.transitions` and what one epoch does in each stage in
:mod:`esper.core.epoch`. Nothing here mutates, emits or performs I/O. The
shell applies these outside the compiled graph once per epoch (or on an
explicit request) and turns the difference between two states into events
with :func:`events`.

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

import torch

from ..errors import (
    FossilizedSeedError,
    InvalidTransitionError,
    NoLiveSeedError,
    SlotOccupiedError,
    StageError,
)
from ..leyline import GateResult, SeedStage, SlotTelemetry, is_live, is_valid_transition
from ..leyline.constants import (
    BLEND_ALGORITHMS,
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_CANDIDATES,
)
from ..validation import check_int
from . import gates as G
from .alpha import check_alpha
from .epoch import run_epoch
from .state import SeedMetrics, SlotState
from .tournament import check_candidates
from .transitions import (
    allowed,
    alpha_tensor,
    check_state,
    check_telemetry,
    enter,
    enter_gated,
    enter_pruned,
    observe,
    with_gate,
)

_S = SeedStage


# --------------------------------------------------------------------------- requests


def germinate(
    state: SlotState,
    blueprint_id: str,
    seed_id: str,
    *,
    blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
    seed_params: int = 0,
    candidates: int = DEFAULT_CANDIDATES,
) -> SlotState:
    """Plant a seed, or a tournament of candidate seeds, in a DORMANT slot (gate G0).

    Arguments:
        state: a DORMANT slot.
        blueprint_id: which blueprint the seed was built from.
        seed_id: a name for this seed, unique in the run.
        blend_algorithm_id: ``"linear"``, ``"sigmoid"`` or ``"gated"``.
        seed_params: the seed's parameter count (reported in events; all the
            candidates' together in a tournament).
        candidates: how many candidate seeds of the blueprint incubate (see
            :mod:`esper.core.tournament`); 1, the default, plants one seed.

    Returns:
        The GERMINATED state.

    Raises:
        SlotOccupiedError: the slot is not DORMANT (a ``RuntimeError``).
        ValueError: a missing id, an unknown blend algorithm, a negative count, or
            ``candidates`` above :data:`~esper.leyline.constants.MAX_CANDIDATES`.
        TypeError: ``candidates`` is not an int.
    """
    check_state(state)
    if state.stage != _S.DORMANT:
        raise SlotOccupiedError(_occupied_message(state))
    result = G.g0_identity(blueprint_id, seed_id)
    if not result.passed:
        raise ValueError(f"cannot germinate in {state.slot_id!r}: {result.message}")
    if blend_algorithm_id not in BLEND_ALGORITHMS:
        raise ValueError(f"unknown blend algorithm {blend_algorithm_id!r}; "
                         f"known: {', '.join(BLEND_ALGORITHMS)}")
    check_int("seed_params", seed_params, minimum=0)
    check_candidates(candidates)
    state = with_gate(state, result)
    return enter(state, _S.GERMINATED, "germinate", blueprint_id=blueprint_id, seed_id=seed_id,
                  blend_algorithm_id=blend_algorithm_id, seed_params=seed_params,
                  metrics=SeedMetrics(), prune_reason=None, candidates=candidates, dropped=(),
                  selection=None)


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
    check_state(state)
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
    return enter_pruned(state, reason, detail)


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
    check_state(state)
    check_telemetry(telemetry)
    if state.stage != _S.HOLDING:
        return state, GateResult.refused(
            _S.FOSSILIZED, "not_in_holding",
            f"fossilize needs a HOLDING seed; {state.slot_id!r} is {state.stage.name}")
    state = state.replace(metrics=observe(state.metrics, telemetry, count_epoch=False))
    result = G.g5_contribution(state, telemetry)
    state = with_gate(state, result)
    if not result.passed:
        return state, result
    return enter(state, _S.FOSSILIZED, "fossilize"), result


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
    check_state(state)
    check_telemetry(telemetry)
    target = SeedStage.parse(target)
    source = state.stage
    if not is_valid_transition(source, target):
        return state, GateResult.refused(
            target, "out_of_order",
            f"{source.name} -> {target.name} is not a valid transition "
            f"(allowed: {allowed(source)}): request one of those")
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
    state = state.replace(metrics=observe(state.metrics, telemetry, count_epoch=False))
    result = gate(state)
    state = with_gate(state, result)
    return (enter_gated(state, target) if result.passed else state), result


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
    check_state(state)
    check_telemetry(telemetry)
    return run_epoch(state.replace(epoch=state.epoch + 1), telemetry)


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
    check_state(state)
    target = SeedStage.parse(target)
    if state.stage == _S.DORMANT and target == _S.GERMINATED:
        raise InvalidTransitionError("a seed enters a slot only through germinate(state, "
                                     "blueprint_id, seed_id)")
    if not is_valid_transition(state.stage, target):
        raise InvalidTransitionError(f"invalid transition {state.stage.name} -> {target.name} "
                                     f"(allowed: {allowed(state.stage)}): request one of those")
    if target == _S.PRUNED:
        return prune(state, "transition")
    if target == _S.DORMANT:
        return enter(state, target, "transition", blueprint_id=None, seed_id=None,
                     seed_params=0, metrics=SeedMetrics(), prune_reason=None, last_gate=None)
    if target == _S.BLENDING and state.stage == _S.TRAINING:
        return enter_gated(state, target, "transition")
    return enter(state, target, "transition")


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
    check_state(state)
    if state.stage not in (_S.BLENDING, _S.HOLDING):
        raise StageError(f"alpha is fixed by the stage in {state.stage.name}; set_alpha needs "
                         "a BLENDING or HOLDING seed")
    alpha = check_alpha(value, where=f"slot {state.slot_id!r}", channels=state.channels,
                        mode=state.alpha_mode)
    return state.replace(alpha=alpha_tensor(state, alpha))
