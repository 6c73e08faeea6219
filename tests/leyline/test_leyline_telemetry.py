"""Telemetry contracts: event types, payload fields, TelemetryEvent, SlotTelemetry."""

from __future__ import annotations

import dataclasses
import math

import pytest

from esper.leyline import EVENT_PAYLOAD_FIELDS, EventType, SlotTelemetry, TelemetryEvent


def test_event_types_are_strings():
    assert {e.value for e in EventType} == {
        "SEED_GERMINATED", "SEED_STAGE_CHANGED", "SEED_GATE_EVALUATED", "SEED_FOSSILIZED",
        "SEED_PRUNED", "COMMAND_REJECTED", "BREAKER_CHANGED", "SEED_FROZEN",
        "CANDIDATE_SELECTED"}
    assert EventType.SEED_PRUNED == "SEED_PRUNED"


def test_payload_fields_cover_every_event_and_the_spec_keys():
    assert set(EVENT_PAYLOAD_FIELDS) == set(EventType)
    spec = {  # the bible's "key payload fields" must be present
        EventType.SEED_GERMINATED: {"blueprint_id", "seed_id", "params"},
        EventType.SEED_STAGE_CHANGED: {"from", "to"},
        EventType.SEED_FOSSILIZED: {"improvement", "counterfactual", "params_added"},
        EventType.SEED_PRUNED: {"reason", "counterfactual", "epochs_total"},
    }
    for kind, keys in spec.items():
        assert keys <= set(EVENT_PAYLOAD_FIELDS[kind])
    for fields in EVENT_PAYLOAD_FIELDS.values():
        assert len(fields) == len(set(fields))
    with pytest.raises(TypeError):
        EVENT_PAYLOAD_FIELDS[EventType.SEED_PRUNED] = ()  # type: ignore[index]


def _payload(kind):
    return {k: None for k in EVENT_PAYLOAD_FIELDS[kind]}


@pytest.mark.parametrize("kind", list(EventType))
def test_event_needs_exact_payload_keys(kind):
    event = TelemetryEvent(kind, "mid", "s1", 3, _payload(kind))
    assert set(event.payload) == set(EVENT_PAYLOAD_FIELDS[kind])
    with pytest.raises(ValueError, match="payload must have keys"):
        TelemetryEvent(kind, "mid", "s1", 3, {**_payload(kind), "extra": 1})
    missing = _payload(kind)
    missing.pop(next(iter(missing)))
    with pytest.raises(ValueError, match="payload must have keys"):
        TelemetryEvent(kind, "mid", "s1", 3, missing)


def test_event_payload_is_a_read_only_copy():
    source = _payload(EventType.SEED_STAGE_CHANGED)
    event = TelemetryEvent(EventType.SEED_STAGE_CHANGED, "mid", None, 0, source)
    source["from"] = "changed"
    assert event.payload["from"] is None
    with pytest.raises(TypeError):
        event.payload["from"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.epoch = 4  # type: ignore[misc]


def test_event_to_dict():
    payload = {"from": "DORMANT", "to": "GERMINATED", "reason": "germinate"}
    event = TelemetryEvent(EventType.SEED_STAGE_CHANGED, "mid", "s1", 2, payload)
    assert event.to_dict() == {"type": "SEED_STAGE_CHANGED", "slot_id": "mid", "seed_id": "s1",
                               "epoch": 2, "payload": payload}


def test_slot_telemetry_defaults():
    t = SlotTelemetry(50.0)
    assert (t.counterfactual_contribution, t.seed_gradient_norm_ratio, t.isolation_violations,
            t.finite) == (None, None, 0, True)
    assert t.is_finite
    assert SlotTelemetry(50).is_finite  # ints are numbers


@pytest.mark.parametrize("kwargs", [
    {"accuracy": None}, {"accuracy": "50"}, {"accuracy": True}, {"accuracy": [1.0]},
    {"accuracy": 1.0, "counterfactual_contribution": "1"},
    {"accuracy": 1.0, "counterfactual_contribution": False},
    {"accuracy": 1.0, "seed_gradient_norm_ratio": "0.1"},
    {"accuracy": 1.0, "isolation_violations": 1.0},
    {"accuracy": 1.0, "isolation_violations": None},
    {"accuracy": 1.0, "isolation_violations": True},
    {"accuracy": 1.0, "finite": 1}, {"accuracy": 1.0, "finite": None},
])
def test_slot_telemetry_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError, match="SlotTelemetry"):
        SlotTelemetry(**kwargs)


def test_slot_telemetry_negative_violations_raise_value_error():
    with pytest.raises(ValueError, match="isolation_violations"):
        SlotTelemetry(1.0, isolation_violations=-1)


@pytest.mark.parametrize("kwargs", [
    {"accuracy": math.nan}, {"accuracy": math.inf}, {"accuracy": -math.inf},
    {"accuracy": 1.0, "counterfactual_contribution": math.nan},
    {"accuracy": 1.0, "counterfactual_contribution": -math.inf},
    {"accuracy": 1.0, "seed_gradient_norm_ratio": math.inf},
    {"accuracy": 1.0, "finite": False},
])
def test_non_finite_numbers_are_data(kwargs):
    t = SlotTelemetry(**kwargs)  # accepted
    assert t.is_finite is False


def test_huge_and_negative_finite_numbers_are_finite():
    assert SlotTelemetry(-1e308, counterfactual_contribution=1e308,
                         seed_gradient_norm_ratio=-5.0).is_finite


def test_int_too_large_for_float_is_rejected_or_reported_non_finite():
    try:
        t = SlotTelemetry(10**400)
    except (TypeError, ValueError):
        return
    assert t.is_finite is False


def test_seed_culled_is_the_older_name_of_seed_pruned():
    """As ``SeedStage.CULLED`` aliases ``PRUNED``; the alias adds no member and no value."""
    assert EventType.SEED_CULLED is EventType.SEED_PRUNED
    assert EventType["SEED_CULLED"] is EventType.SEED_PRUNED
    assert EventType.SEED_CULLED.value == "SEED_PRUNED"
    fields = EVENT_PAYLOAD_FIELDS
    assert fields[EventType.SEED_CULLED] == fields[EventType.SEED_PRUNED]
    assert len(list(EventType)) == 9
