"""The per-slot circuit breaker for seeds that misbehave: a pure state machine.

:class:`BreakerState` is a frozen dataclass and every transition returns
``(new_state, events)``; nothing is mutated or emitted here. Every status
change, every probe success while HALF_OPEN and every manual override yields a
``BREAKER_CHANGED`` event, so recovery and overrides are observable.
:func:`allows` answers with an explicit decision, not a bool.

Status machine (``step`` is the optimizer step)::

    CLOSED --failures >= failure_threshold--> OPEN --cooldown_steps (tick)--> HALF_OPEN
    HALF_OPEN --half_open_successes successes--> CLOSED
    HALF_OPEN --any failure--> OPEN
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..leyline import EventType, TelemetryEvent
from ..leyline.constants import DEFAULT_MAX_HISTORY
from ..validation import check_int

BreakerStatus = Literal["CLOSED", "OPEN", "HALF_OPEN"]
Decision = Literal["allow", "deny_open", "probe"]
STATUSES: tuple[BreakerStatus, ...] = ("CLOSED", "OPEN", "HALF_OPEN")
_DECISIONS: dict[str, Decision] = {"CLOSED": "allow", "OPEN": "deny_open", "HALF_OPEN": "probe"}


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When the breaker opens and how it recovers.

    Attributes:
        failure_threshold: consecutive failures while CLOSED that open it (>= 1).
        cooldown_steps: steps spent OPEN before :func:`tick` half-opens it (>= 0).
        half_open_successes: probe successes while HALF_OPEN that close it (>= 1).
    """

    failure_threshold: int = 1
    cooldown_steps: int = 50
    half_open_successes: int = 3

    def __post_init__(self) -> None:
        for name, minimum in (("failure_threshold", 1), ("cooldown_steps", 0),
                              ("half_open_successes", 1)):
            check_int(f"BreakerConfig.{name}", getattr(self, name), minimum=minimum,
                      type_error=TypeError)


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One entry of a breaker's bounded history (status changes and overrides)."""

    step: int
    from_status: BreakerStatus
    to_status: BreakerStatus
    reason: str
    forced: bool = False


@dataclass(frozen=True, slots=True)
class BreakerState:
    """The breaker of one slot (immutable; change it with the transition functions).

    Attributes:
        slot_id: the slot guarded.
        status: ``"CLOSED"`` (seed runs), ``"OPEN"`` (seed denied) or ``"HALF_OPEN"``
            (seed runs as a probe).
        failures: consecutive failures (reset by a success while CLOSED and on closing).
        opened_at_step: the step the cooldown counts from; set whenever OPEN.
        probe_successes: successes counted in the current HALF_OPEN period.
        history: the last ``DEFAULT_MAX_HISTORY`` transitions, oldest first.
        seed_id: the seed in the slot, stamped on events (``None`` if unknown).
    """

    slot_id: str
    status: BreakerStatus = "CLOSED"
    failures: int = 0
    opened_at_step: int | None = None
    probe_successes: int = 0
    history: tuple[BreakerTransition, ...] = ()
    seed_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"BreakerState.status must be one of {STATUSES}, got {self.status!r}")
        for name in ("failures", "probe_successes"):
            check_int(f"BreakerState.{name}", getattr(self, name), minimum=0, type_error=TypeError)
        if self.opened_at_step is not None:
            check_int("BreakerState.opened_at_step", self.opened_at_step, minimum=0,
                      type_error=TypeError)
        elif self.status == "OPEN":
            raise ValueError("an OPEN BreakerState needs opened_at_step")
        if len(self.history) > DEFAULT_MAX_HISTORY:
            raise ValueError(f"history holds at most {DEFAULT_MAX_HISTORY} records, "
                             f"got {len(self.history)}")


Result = tuple[BreakerState, tuple[TelemetryEvent, ...]]


def _event(before: BreakerState, after: BreakerState, step: int, epoch: int | None,
           reason: str, forced: bool = False, probes: int | None = None) -> TelemetryEvent:
    payload = {"from": before.status, "to": after.status, "reason": reason, "step": step,
               "failures": after.failures,
               "probe_successes": after.probe_successes if probes is None else probes,
               "forced": forced}
    return TelemetryEvent(EventType.BREAKER_CHANGED, before.slot_id, before.seed_id,
                          step if epoch is None else epoch, payload)


def _move(state: BreakerState, step: int, epoch: int | None, to: BreakerStatus, reason: str,
          *, forced: bool = False, probes: int | None = None, **changes: object) -> Result:
    """The new state with ``changes`` applied, its history entry and its one event."""
    record = BreakerTransition(step, state.status, to, reason, forced)
    history = (*state.history, record)[-DEFAULT_MAX_HISTORY:]
    new = dataclasses.replace(state, status=to, history=history, **changes)
    return new, (_event(state, new, step, epoch, reason, forced, probes),)


def _check_step(step: object) -> None:
    check_int("breaker.step", step, minimum=0, type_error=TypeError)


def record_failure(state: BreakerState, step: int, cfg: BreakerConfig, reason: str, *,
                   epoch: int | None = None) -> Result:
    """A non-finite activation or gradient was seen in the slot at ``step``.

    CLOSED: counts it and opens at ``cfg.failure_threshold``. HALF_OPEN: the probe
    failed, so it reopens. OPEN: counts it and restarts the cooldown (no event).

    Arguments:
        state: the breaker before.
        step: the optimizer step (>= 0).
        cfg: thresholds.
        reason: why, e.g. ``"non_finite_grad"``; carried on the event.
        epoch: stamped on events as ``TelemetryEvent.epoch``; defaults to ``step``.

    Returns:
        ``(new_state, events)``; ``events`` is empty when the status did not change.
    """
    _check_step(step)
    failures = state.failures + 1
    if state.status == "OPEN":
        return dataclasses.replace(state, failures=failures, opened_at_step=step), ()
    if state.status == "CLOSED" and failures < cfg.failure_threshold:
        return dataclasses.replace(state, failures=failures), ()
    return _move(state, step, epoch, "OPEN", reason, failures=failures, opened_at_step=step,
                 probe_successes=0)


def record_success(state: BreakerState, step: int, cfg: BreakerConfig, *,
                   epoch: int | None = None) -> Result:
    """The slot ran a finite step at ``step``.

    CLOSED: resets the consecutive-failure count (no event). HALF_OPEN: counts a
    probe success and emits an event for it (reason ``"probe_success"``, status
    unchanged); the ``cfg.half_open_successes``-th closes the breaker instead
    (reason ``"recovered"``; the event's ``probe_successes`` is the final count,
    the closed state's is 0). OPEN: the seed was denied, so nothing changes.

    Returns:
        ``(new_state, events)``.
    """
    _check_step(step)
    if state.status == "CLOSED":
        return (dataclasses.replace(state, failures=0) if state.failures else state), ()
    if state.status == "OPEN":
        return state, ()
    successes = state.probe_successes + 1
    if successes >= cfg.half_open_successes:
        return _move(state, step, epoch, "CLOSED", "recovered", probes=successes, failures=0,
                     opened_at_step=None, probe_successes=0)
    new = dataclasses.replace(state, probe_successes=successes)
    return new, (_event(state, new, step, epoch, "probe_success"),)


def tick(state: BreakerState, step: int, cfg: BreakerConfig, *,
         epoch: int | None = None) -> Result:
    """Advance time: an OPEN breaker half-opens once ``cfg.cooldown_steps`` have passed.

    Returns:
        ``(new_state, events)``; unchanged with no event unless it half-opened
        (reason ``"cooldown_elapsed"``).
    """
    _check_step(step)
    opened = state.opened_at_step
    if state.status != "OPEN" or opened is None or step - opened < cfg.cooldown_steps:
        return state, ()
    return _move(state, step, epoch, "HALF_OPEN", "cooldown_elapsed", probe_successes=0)


def force(state: BreakerState, status: BreakerStatus, step: int, reason: str, *,
          epoch: int | None = None) -> Result:
    """Manual override to ``status``: always one event (``forced=True``), even if unchanged.

    OPEN starts a cooldown at ``step``; HALF_OPEN starts a fresh probe period;
    CLOSED clears failures and probes. The failure count is otherwise kept.

    Raises:
        ValueError: ``status`` is not a breaker status.
    """
    _check_step(step)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    changes: dict[str, object] = {"probe_successes": 0}
    if status == "OPEN":
        changes["opened_at_step"] = step
    elif status == "CLOSED":
        changes.update(failures=0, opened_at_step=None)
    return _move(state, step, epoch, status, reason, forced=True, **changes)


def allows(state: BreakerState) -> Decision:
    """What the slot may do now: ``"allow"`` (CLOSED), ``"deny_open"`` (OPEN: skip the
    seed) or ``"probe"`` (HALF_OPEN: run it and report the outcome)."""
    return _DECISIONS[state.status]
