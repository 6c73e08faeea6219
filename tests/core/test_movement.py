"""Whether a training seed's weights moved: the baseline, the sticky verdict, the one event.

Pure: fingerprints here are made-up strings (the slot takes real ones, see
``tests/nn/test_frozen_seed.py``).
"""

from __future__ import annotations

from esper.core.events import events
from esper.core.movement import (
    FROZEN_HINT,
    became_frozen,
    frozen_message,
    needs_baseline,
    needs_measurement,
    observe_movement,
    watch,
)
from esper.kasmina import SlotState, germinate, transition
from esper.leyline import EVENT_PAYLOAD_FIELDS, EventType, SeedStage

S = SeedStage


def in_training(seed_id: str = "seed-1") -> SlotState:
    state = germinate(SlotState.dormant("mid", channels=4), "norm", seed_id, seed_params=42)
    return transition(state, S.TRAINING)


def test_a_baseline_is_taken_once_in_training_only():
    germinated = germinate(SlotState.dormant("mid", channels=4), "norm", "seed-1")
    assert not needs_baseline(germinated)
    assert watch(germinated, "before") is germinated
    state = in_training()
    assert needs_baseline(state) and not needs_measurement(state)
    watched = watch(state, "before")
    assert watched.metrics.training_fingerprint == "before"
    assert watched.metrics.weights_moved is None
    assert not needs_baseline(watched) and needs_measurement(watched)
    assert watch(watched, "later") is watched  # the baseline stays the one TRAINING began with


def test_a_seed_without_parameters_is_not_watched():
    state = in_training()
    assert watch(state, None) is state
    assert observe_movement(state, None) is state  # nothing to compare with


def test_movement_is_measured_against_the_baseline_and_is_for_good():
    state = watch(in_training(), "before")
    frozen = observe_movement(state, "before")
    assert frozen.metrics.weights_moved is False
    moved = observe_movement(frozen, "after")
    assert moved.metrics.weights_moved is True and not needs_measurement(moved)
    assert observe_movement(moved, "before") is moved  # back to the old values: it did move


def test_the_verdict_outlives_training():
    state = observe_movement(watch(in_training(), "before"), "after")
    blending = transition(state, S.BLENDING)
    assert blending.metrics.weights_moved is True
    assert not needs_measurement(blending)


def test_a_seed_is_found_frozen_once_and_the_event_says_so():
    state = watch(in_training(), "before")
    frozen = observe_movement(state, "before")
    assert became_frozen(state, frozen)
    assert not became_frozen(frozen, observe_movement(frozen, "before"))  # not every epoch
    found = events(state, frozen)
    assert [e.type for e in found] == [EventType.SEED_FROZEN]
    event = found[0]
    assert set(event.payload) == set(EVENT_PAYLOAD_FIELDS[EventType.SEED_FROZEN])
    assert (event.slot_id, event.seed_id) == ("mid", "seed-1")
    assert event.payload["slot"] == "mid" and event.payload["seed_id"] == "seed-1"
    assert event.payload["params"] == 42 and event.payload["blueprint_id"] == "norm"
    assert event.payload["hint"] == FROZEN_HINT
    assert "esper.optim.bind(optimizer, model)" in FROZEN_HINT
    assert event.payload["detail"] == frozen_message(frozen)
    assert "none of its 42 parameters moved since it began TRAINING" in frozen_message(frozen)
    assert events(frozen, observe_movement(frozen, "before")) == ()


def test_a_moving_seed_gives_no_event():
    state = watch(in_training(), "before")
    assert events(state, observe_movement(state, "after")) == ()


def test_a_new_seeds_verdict_is_its_own():
    frozen = observe_movement(watch(in_training("seed-1"), "before"), "before")
    other = observe_movement(watch(in_training("seed-2"), "x"), "x")
    assert became_frozen(frozen, other)  # another seed: found frozen for the first time
