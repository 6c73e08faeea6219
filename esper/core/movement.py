"""Whether a training seed's weights moved: the baseline the shell takes, the fact G2 reads.

A seed whose parameters are in no optimizer step (a user's optimizer built before the
seed germinated, without :func:`esper.optim.bind`) still gets gradients, so G2's
gradient check alone would let it blend in untrained. The shell
(:class:`~esper.nn.slot.SeedSlot`) fingerprints the seed's weights as the seed enters
TRAINING (:func:`watch`) and again before G2 may be judged (:func:`observe_movement`);
the state carries the baseline and the verdict (``metrics.training_fingerprint``,
``metrics.weights_moved``), G2 reads the verdict, and
:func:`~esper.core.events.events` turns its arrival into one ``SEED_FROZEN`` event.

A fingerprint is an opaque string (equal strings: the same weights), ``None`` for a
seed without parameters, which has nothing to watch. The baseline is part of the
state, so it survives a checkpoint: a resumed seed is compared with its weights as
TRAINING began, not as the run resumed. Everything here is pure.
"""

from __future__ import annotations

from ..leyline import SeedStage
from .state import SlotState

FROZEN_HINT = "add the seed's parameters to your optimizer: esper.optim.bind(optimizer, model)"


def needs_baseline(state: SlotState) -> bool:
    """Whether ``state`` is in TRAINING without a baseline yet (just entered, or a state
    written before baselines were kept)."""
    m = state.metrics
    return (state.stage == SeedStage.TRAINING and m.training_fingerprint is None
            and m.weights_moved is None)


def watch(state: SlotState, fingerprint: str | None) -> SlotState:
    """``state`` with ``fingerprint`` as its seed's weights as TRAINING began (``None``:
    a seed without parameters; the state is returned as it is)."""
    if fingerprint is None or not needs_baseline(state):
        return state
    return state.replace(metrics=state.metrics.replace(training_fingerprint=fingerprint))


def needs_measurement(state: SlotState) -> bool:
    """Whether a fingerprint taken now could change the verdict: in TRAINING, with a
    baseline, and not yet seen to move (a move is for good, so it is measured no more)."""
    m = state.metrics
    return (state.stage == SeedStage.TRAINING and m.training_fingerprint is not None
            and m.weights_moved is not True)


def observe_movement(state: SlotState, fingerprint: str | None) -> SlotState:
    """``state`` with ``weights_moved`` from a fingerprint of its seed's weights now.

    ``True`` once they differ from the baseline (and for good after that), ``False``
    while they do not. A state that :func:`needs_measurement` says nothing about is
    returned as it is.
    """
    if not needs_measurement(state):
        return state
    moved = fingerprint != state.metrics.training_fingerprint
    return state.replace(metrics=state.metrics.replace(weights_moved=moved))


def became_frozen(before: SlotState, after: SlotState) -> bool:
    """Whether going from ``before`` to ``after`` first found ``after``'s seed frozen."""
    if after.metrics.weights_moved is not False:
        return False
    return before.metrics.weights_moved is not False or before.seed_id != after.seed_id


def frozen_message(state: SlotState) -> str:
    """Why a frozen seed is refused, in words (the event's ``detail`` and the warning's)."""
    return (f"seed {state.seed_id!r} in slot {state.slot_id!r} did not train: none of its "
            f"{state.seed_params} parameters moved since it began TRAINING (no optimizer "
            "step updates them, or their learning rate is zero), so G2 will not let it "
            "blend in")


__all__ = ["FROZEN_HINT", "became_frozen", "frozen_message", "needs_baseline",
           "needs_measurement", "observe_movement", "watch"]
