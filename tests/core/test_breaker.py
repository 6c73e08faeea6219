"""Circuit breaker (pure transitions, events, purity, bounded history) and device helpers."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from esper.core.breaker import (
    BreakerConfig,
    BreakerState,
    allows,
    force,
    record_failure,
    record_success,
    tick,
)
from esper.leyline import EVENT_PAYLOAD_FIELDS, EventType
from esper.leyline.constants import DEFAULT_MAX_HISTORY

CFG = BreakerConfig(failure_threshold=2, cooldown_steps=10, half_open_successes=3)


def only_event(events, frm, to, reason):
    (event,) = events
    assert event.type == EventType.BREAKER_CHANGED
    assert set(event.payload) == set(EVENT_PAYLOAD_FIELDS[EventType.BREAKER_CHANGED])
    assert (event.payload["from"], event.payload["to"], event.payload["reason"]) == (
        frm, to, reason)
    return event


def opened(step=5) -> BreakerState:
    state, _ = record_failure(BreakerState("mid"), step, BreakerConfig(), "nan")
    return state


def half_open() -> BreakerState:
    state, _ = tick(opened(0), 10, CFG)
    assert state.status == "HALF_OPEN"
    return state


# --- configuration and state validation -------------------------------------------------

def test_config_defaults_and_validation():
    assert BreakerConfig() == BreakerConfig(1, 50, 3)
    for bad in ({"failure_threshold": 0}, {"cooldown_steps": -1}, {"half_open_successes": 0}):
        with pytest.raises(ValueError):
            BreakerConfig(**bad)
    with pytest.raises(TypeError):
        BreakerConfig(failure_threshold=True)


def test_state_validation():
    with pytest.raises(ValueError, match="status"):
        BreakerState("mid", status="BROKEN")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opened_at_step"):
        BreakerState("mid", status="OPEN")
    with pytest.raises(ValueError, match="failures"):
        BreakerState("mid", failures=-1)
    with pytest.raises(ValueError, match="history"):
        BreakerState("mid", history=(opened().history[0],) * (DEFAULT_MAX_HISTORY + 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        BreakerState("mid").status = "OPEN"  # type: ignore[misc]
    with pytest.raises(ValueError, match="step"):
        tick(BreakerState("mid"), -1, CFG)


# --- transitions --------------------------------------------------------------------------

def test_allows_is_explicit_per_status():
    assert allows(BreakerState("mid")) == "allow"
    assert allows(opened()) == "deny_open"
    assert allows(half_open()) == "probe"


def test_failures_below_threshold_count_silently_then_open_with_event():
    state, events = record_failure(BreakerState("mid", seed_id="s1"), 3, CFG, "nan_grad")
    assert (state.status, state.failures, events) == ("CLOSED", 1, ())
    state, events = record_failure(state, 4, CFG, "nan_grad")
    event = only_event(events, "CLOSED", "OPEN", "nan_grad")
    assert (state.status, state.failures, state.opened_at_step) == ("OPEN", 2, 4)
    assert (event.slot_id, event.seed_id, event.epoch, event.payload["step"]) == (
        "mid", "s1", 4, 4)
    assert event.payload["failures"] == 2 and event.payload["forced"] is False


def test_default_threshold_opens_on_first_failure():
    assert opened().status == "OPEN"


def test_success_while_closed_resets_consecutive_failures():
    state, _ = record_failure(BreakerState("mid"), 1, CFG, "nan")
    state, events = record_success(state, 2, CFG)
    assert (state.failures, events) == (0, ())
    clean = BreakerState("mid")
    assert record_success(clean, 3, CFG) == (clean, ())


def test_open_ignores_success_and_failure_restarts_cooldown():
    state = opened(5)
    assert record_success(state, 6, CFG) == (state, ())
    again, events = record_failure(state, 8, CFG, "nan")
    assert (again.status, again.failures, again.opened_at_step, events) == ("OPEN", 2, 8, ())


def test_tick_half_opens_only_after_cooldown():
    state = opened(5)
    assert tick(state, 14, CFG) == (state, ())
    new, events = tick(state, 15, CFG, epoch=2)
    event = only_event(events, "OPEN", "HALF_OPEN", "cooldown_elapsed")
    assert (new.status, new.probe_successes, event.epoch, event.payload["step"]) == (
        "HALF_OPEN", 0, 2, 15)
    for other in (BreakerState("mid"), new):
        assert tick(other, 1000, CFG) == (other, ())


def test_half_open_probe_successes_surface_and_recovery_closes_with_event():
    state = half_open()
    for n in (1, 2):
        state, events = record_success(state, 10 + n, CFG)
        event = only_event(events, "HALF_OPEN", "HALF_OPEN", "probe_success")
        assert state.status == "HALF_OPEN" and event.payload["probe_successes"] == n
    state, events = record_success(state, 13, CFG)
    event = only_event(events, "HALF_OPEN", "CLOSED", "recovered")
    assert event.payload["probe_successes"] == 3 and event.payload["failures"] == 0
    assert (state.status, state.failures, state.probe_successes, state.opened_at_step) == (
        "CLOSED", 0, 0, None)
    assert [(r.from_status, r.to_status) for r in state.history] == [
        ("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]


def test_half_open_failure_reopens_with_event():
    state, _ = record_success(half_open(), 11, CFG)
    new, events = record_failure(state, 12, CFG, "probe_nan")
    only_event(events, "HALF_OPEN", "OPEN", "probe_nan")
    assert (new.status, new.opened_at_step, new.probe_successes) == ("OPEN", 12, 0)


@pytest.mark.parametrize("start", ["CLOSED", "OPEN", "HALF_OPEN"])
@pytest.mark.parametrize("target", ["CLOSED", "OPEN", "HALF_OPEN"])
def test_force_always_emits_a_forced_event(start, target):
    state = {"CLOSED": BreakerState("mid"), "OPEN": opened(), "HALF_OPEN": half_open()}[start]
    new, events = force(state, target, 20, "operator")
    event = only_event(events, start, target, "operator")
    assert event.payload["forced"] is True and new.history[-1].forced
    assert new.status == target and new.probe_successes == 0
    assert allows(new) == {"CLOSED": "allow", "OPEN": "deny_open", "HALF_OPEN": "probe"}[target]
    if target == "OPEN":
        assert new.opened_at_step == 20
    if target == "CLOSED":
        assert (new.failures, new.opened_at_step) == (0, None)


def test_force_rejects_unknown_status():
    with pytest.raises(ValueError, match="status"):
        force(BreakerState("mid"), "BROKEN", 1, "x")  # type: ignore[arg-type]


def test_transitions_are_pure():
    states = [BreakerState("mid"), opened(), half_open()]
    calls = [lambda s: record_failure(s, 30, CFG, "nan"), lambda s: record_success(s, 30, CFG),
             lambda s: tick(s, 30, CFG), lambda s: force(s, "OPEN", 30, "op"), allows]
    for state in states:
        snapshot = copy.deepcopy(state)
        for call in calls:
            call(state)
            assert state == snapshot


def test_history_is_bounded_and_keeps_the_newest():
    state = BreakerState("mid")
    for step in range(DEFAULT_MAX_HISTORY + 20):
        state, _ = force(state, "OPEN" if step % 2 else "CLOSED", step, f"op{step}")
    assert len(state.history) == DEFAULT_MAX_HISTORY
    assert state.history[-1].reason == f"op{DEFAULT_MAX_HISTORY + 19}"
    assert state.history[0].step == 20


def test_event_serialises():
    _, events = force(BreakerState("mid"), "OPEN", 3, "op")
    assert events[0].to_dict()["type"] == "BREAKER_CHANGED"
