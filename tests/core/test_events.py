"""events(before, after): payloads, order and whole runs."""

from __future__ import annotations

import copy

import pytest

from esper.kasmina import SlotState, advance, events, fossilize, germinate, prune, step
from esper.leyline import (
    EVENT_PAYLOAD_FIELDS,
    EventType,
    SeedStage,
    SlotTelemetry,
    TaskConfig,
    TelemetryEvent,
)

S = SeedStage
E = EventType
GATE, GERM, CHANGE, FOSSIL, PRUNE = (E.SEED_GATE_EVALUATED, E.SEED_GERMINATED,
                                     E.SEED_STAGE_CHANGED, E.SEED_FOSSILIZED, E.SEED_PRUNED)


def tel(accuracy: float = 60.0, **kw) -> SlotTelemetry:
    kw.setdefault("seed_gradient_norm_ratio", 0.5)
    kw.setdefault("probe_loss_reduction", 0.01)
    return SlotTelemetry(accuracy, **kw)


def check_event(event: TelemetryEvent, slot_id: str = "mid") -> None:
    assert isinstance(event, TelemetryEvent)
    assert set(event.payload) == set(EVENT_PAYLOAD_FIELDS[event.type])
    assert event.slot_id == slot_id
    event.to_dict()


def run(state: SlotState, ops) -> tuple[SlotState, list[list[TelemetryEvent]]]:
    """Apply each op, collecting events(before, after) per op."""
    out = []
    for op in ops:
        before = state
        state = op(state)
        found = events(before, state)
        for e in found:
            check_event(e)
        out.append(list(found))
    return state, out


def kinds(batches) -> list[list[EventType]]:
    return [[e.type for e in batch] for batch in batches]


def test_no_change_no_events(slot_at):
    for stage in S:
        s = slot_at(stage)
        assert events(s, s) == ()
        assert events(s, copy.deepcopy(s)) == ()


def test_dormant_step_has_no_events(slot_at):
    d = slot_at(S.DORMANT)
    assert events(d, step(d, tel())) == ()


def test_errors(slot_at):
    a = slot_at(S.DORMANT)
    b = SlotState.dormant("other", channels=4)
    with pytest.raises(ValueError, match="different slots"):
        events(a, b)
    g = germinate(a, "norm", "s")
    with pytest.raises(ValueError, match="older"):
        events(g, a)


def test_germinate_events(slot_at):
    d = slot_at(S.DORMANT)
    g = germinate(d, "norm", "seed-5", seed_params=321)
    found = events(d, g)
    assert [e.type for e in found] == [GATE, GERM, CHANGE]
    gate, germ, change = found
    assert gate.payload["gate"] == "G0" and gate.payload["passed"] is True
    assert gate.payload["target"] == "GERMINATED"
    assert dict(germ.payload) == {"blueprint_id": "norm", "seed_id": "seed-5", "params": 321}
    assert dict(change.payload) == {"from": "DORMANT", "to": "GERMINATED", "reason": "germinate"}
    assert all(e.seed_id == "seed-5" for e in found)
    for e in found:
        check_event(e)


def test_gate_payload_is_the_gate_result(slot_at):
    t = slot_at(S.TRAINING, task=TaskConfig(max_epochs=25))
    s, result = advance(t, S.BLENDING, tel())
    (gate,) = events(t, s)
    assert gate.type is GATE
    assert dict(gate.payload) == result.to_dict()
    assert gate.payload["checks_failed"] == ["dwell_short"]
    assert gate.epoch == s.epoch


def test_failed_fossilize_emits_only_the_gate(slot_at):
    h = slot_at(S.HOLDING)
    for _ in range(2):  # the ramp reaches alpha 1, then 0.1 is recorded at alpha 1
        h = step(h, tel(counterfactual_contribution=0.1))
    s, _ = fossilize(h, tel(counterfactual_contribution=0.1))
    found = events(h, s)
    assert [e.type for e in found] == [GATE]
    assert found[0].payload["passed"] is False
    assert found[0].payload["checks_failed"] == ["contribution_low"]


def test_refusals_emit_nothing(slot_at):
    t = slot_at(S.TRAINING)
    s, _ = advance(t, S.FOSSILIZED, tel())
    assert events(t, s) == ()
    g = slot_at(S.GERMINATED)
    s, _ = fossilize(g, tel(counterfactual_contribution=5.0))
    assert events(g, s) == ()


def test_full_run_dormant_to_fossilized(slot_at):
    d = slot_at(S.DORMANT)  # max_epochs 5: dwell 1, 5 blend steps, sigmoid
    ops = [
        lambda s: germinate(s, "norm", "seed-1", seed_params=10),
        lambda s: step(s, tel(50.0)),  # G1 -> TRAINING
        lambda s: step(s, tel(51.0)),  # dwell 1, G2 -> BLENDING
        lambda s: step(s, tel(52.0)),  # blend 1
        lambda s: step(s, tel(53.0)),  # blend 2
        lambda s: step(s, tel(54.0)),  # blend 3
        lambda s: step(s, tel(55.0)),  # blend 4, alpha .976: G3 -> HOLDING
        lambda s: step(s, tel(56.0, counterfactual_contribution=3.0)),  # holding, ramp to 1
        lambda s: step(s, tel(57.0, counterfactual_contribution=2.5)),  # recorded at alpha 1
        lambda s: fossilize(s, tel(57.0, counterfactual_contribution=2.5))[0],
    ]
    final, batches = run(d, ops)
    assert final.stage is S.FOSSILIZED
    assert kinds(batches) == [
        [GATE, GERM, CHANGE], [GATE, CHANGE], [GATE, CHANGE], [GATE], [GATE], [GATE],
        [GATE, CHANGE], [], [], [GATE, CHANGE, FOSSIL],
    ]
    gates = [b[0].payload["gate"] for b in batches if b]
    assert gates == ["G0", "G1", "G2", "G3", "G3", "G3", "G3", "G5"]
    passed = [b[0].payload["passed"] for b in batches if b]
    assert passed == [True, True, True, False, False, False, True, True]
    changes = [(e.payload["from"], e.payload["to"], e.payload["reason"])
               for b in batches for e in b if e.type is CHANGE]
    assert changes == [("DORMANT", "GERMINATED", "germinate"), ("GERMINATED", "TRAINING", "g1"),
                       ("TRAINING", "BLENDING", "g2"), ("BLENDING", "HOLDING", "g3"),
                       ("HOLDING", "FOSSILIZED", "fossilize")]
    fossil = batches[-1][-1]
    assert dict(fossil.payload) == {
        "blueprint_id": "norm", "seed_id": "seed-1", "improvement": 7.0,
        "blending_delta": 6.0, "counterfactual": 2.5, "params_added": 10,
        "epochs_total": 8, "epochs_in_stage": 2,
    }
    epochs = [b[0].epoch for b in batches if b]
    assert epochs == sorted(epochs)
    assert all(e.seed_id == "seed-1" for b in batches for e in b)


def test_full_run_pruned_to_dormant(slot_at):
    t = slot_at(S.TRAINING, task=TaskConfig(max_epochs=5, embargo_epochs=2))
    ops = [
        lambda s: prune(s, "manual"),
        lambda s: step(s, tel()),  # PRUNED -> EMBARGOED
        lambda s: step(s, tel()),  # embargo 1
        lambda s: step(s, tel()),  # embargo 2 -> RESETTING
        lambda s: step(s, tel()),  # RESETTING -> DORMANT
        lambda s: step(s, tel()),  # DORMANT stays
    ]
    final, batches = run(t, ops)
    assert final.stage is S.DORMANT
    assert kinds(batches) == [[CHANGE, PRUNE], [CHANGE], [], [CHANGE], [CHANGE], []]
    changes = [(e.payload["from"], e.payload["to"], e.payload["reason"])
               for b in batches for e in b if e.type is CHANGE]
    assert changes == [("TRAINING", "PRUNED", "manual"), ("PRUNED", "EMBARGOED", "embargo"),
                       ("EMBARGOED", "RESETTING", "embargo_over"),
                       ("RESETTING", "DORMANT", "reset")]
    pruned = batches[0][1]
    assert pruned.payload["reason"] == "manual"
    assert pruned.payload["seed_id"] == "seed-1" and pruned.payload["blueprint_id"] == "norm"
    assert set(pruned.payload) == set(EVENT_PAYLOAD_FIELDS[PRUNE])
    assert all(e.seed_id == "seed-1" for b in batches for e in b)


@pytest.mark.parametrize(("stage", "telemetry", "reason"), [
    (S.HOLDING, tel(counterfactual_contribution=-1.0), "negative_counterfactual"),
    (S.TRAINING, SlotTelemetry(float("nan")), "non_finite"),
    (S.GERMINATED, tel(finite=False), "non_finite"),
])
def test_automatic_prune_events(slot_at, stage, telemetry, reason):
    s = slot_at(stage)
    after = step(s, telemetry)
    found = events(s, after)
    assert [e.type for e in found][-2:] == [CHANGE, PRUNE]
    assert found[-1].payload["reason"] == reason == found[-2].payload["reason"]
    if found[0].type is GATE:  # a gate, if any, always comes first
        assert all(e.type is not GATE for e in found[1:])


def test_holding_timeout_events(slot_at):
    s = slot_at(S.HOLDING)
    batches = []
    for _ in range(5):
        before, s = s, step(s, tel())
        batches.append([e.type for e in events(before, s)])
    assert batches == [[], [], [], [], [CHANGE, PRUNE]]
    assert s.prune_reason == "holding_timeout"


def test_events_spanning_several_transitions_are_in_order(slot_at):
    d = slot_at(S.DORMANT)
    s = germinate(d, "norm", "seed-1")
    s = step(s, tel(50.0))
    s = step(s, tel(51.0))
    found = events(d, s)
    assert [e.type for e in found] == [GATE, GERM, CHANGE, CHANGE, CHANGE]
    assert found[0].payload["gate"] == "G2"  # the latest gate, first
    assert [e.payload["to"] for e in found if e.type is CHANGE] == [
        "GERMINATED", "TRAINING", "BLENDING"]


def test_events_is_pure(slot_at):
    d = slot_at(S.DORMANT)
    g = germinate(d, "norm", "seed-1")
    cd, cg = copy.deepcopy(d), copy.deepcopy(g)
    first = events(d, g)
    assert events(d, g) == first
    assert d == cd and g == cg
