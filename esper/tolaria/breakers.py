"""The trainer's circuit breakers: one per slot, fed by the step's fault flags.

The compiled step reports, per seed, whether it misbehaved (a non-finite
activation, or non-finite gradients under a finite loss: reason
:data:`NON_FINITE`; an alpha-weighted output that swamps the host's
activations: reason :data:`BLOWUP`) and skips that seed's update on the
device; the trainer mutes the seed (alpha 0) from the next step on, also on
the device. The trainer adds the flags up on the device and
reads them only where it syncs anyway (at the telemetry stride and at the end
of the epoch); :func:`observe` then moves each breaker (pure functions of
:mod:`esper.core.breaker`). A seed whose breaker is not CLOSED at the epoch
boundary is pruned with the reason of its last failure, after which its slot starts
with a fresh breaker, so breakers are always CLOSED between epochs (and need
no checkpoint of their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..core.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerStatus,
    force,
    record_failure,
    record_success,
    tick,
)
from ..leyline import TelemetryEvent
from ..leyline.constants import NON_FINITE

BLOWUP = "blowup"
Breakers = dict[str, BreakerState]
Observed = tuple[Breakers, tuple[TelemetryEvent, ...]]


def fresh(slots: Sequence[str], seed_ids: Mapping[str, str | None]) -> Breakers:
    """A CLOSED breaker for each slot, stamped with its seed (``None`` if dormant)."""
    return {slot: BreakerState(slot, seed_id=seed_ids.get(slot)) for slot in slots}


def observe(breakers: Mapping[str, BreakerState], fault_counts: Mapping[str, int], step: int,
            epoch: int, cfg: BreakerConfig,
            reasons: Mapping[str, str] | None = None) -> Observed:
    """Feed each seeded slot's fault count since the last look into its breaker.

    A count above zero is one failure (reason ``reasons[slot]``, by default
    :data:`NON_FINITE`), zero is one success; then time advances to ``step``
    (an OPEN breaker may half-open). Slots without a count (no seed) are left
    as they are.

    Returns:
        The new breakers and every event their changes produced, in slot order.
    """
    new = dict(breakers)
    events: list[TelemetryEvent] = []
    for slot, count in fault_counts.items():
        state = new[slot]
        if count > 0:
            reason = NON_FINITE if reasons is None else reasons.get(slot, NON_FINITE)
            state, changed = record_failure(state, step, cfg, reason, epoch=epoch)
        else:
            state, changed = record_success(state, step, cfg, epoch=epoch)
        state, ticked = tick(state, step, cfg, epoch=epoch)
        new[slot] = state
        events.extend((*changed, *ticked))
    return new, tuple(events)


def trip_reason(state: BreakerState) -> str:
    """Why ``state`` is not CLOSED: the reason of its last transition (:data:`NON_FINITE`
    if it has no history)."""
    return state.history[-1].reason if state.history else NON_FINITE


def tripped(breakers: Mapping[str, BreakerState]) -> tuple[str, ...]:
    """Slots whose breaker is not CLOSED (their seeds are pruned at the epoch boundary)."""
    return tuple(slot for slot, state in breakers.items() if state.status != "CLOSED")


def forced(breakers: Mapping[str, BreakerState], slot: str, status: BreakerStatus, step: int,
           reason: str, epoch: int) -> Observed:
    """``slot``'s breaker set to ``status`` by hand (an event even if unchanged).

    Raises:
        ValueError: an unknown slot or status.
    """
    if slot not in breakers:
        raise ValueError(f"unknown slot {slot!r}; slots are {list(breakers)}")
    state, events = force(breakers[slot], status, step, reason, epoch=epoch)
    return {**breakers, slot: state}, tuple(events)


def reset(breakers: Mapping[str, BreakerState], slot: str, seed_id: str | None) -> Breakers:
    """``breakers`` with a fresh CLOSED breaker for ``slot``, stamped with ``seed_id``."""
    return {**breakers, slot: BreakerState(slot, seed_id=seed_id)}
