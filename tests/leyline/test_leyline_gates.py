"""GateLevel, GATE_FOR_TARGET and the GateResult invariants."""

from __future__ import annotations

import dataclasses
import math

import pytest

from esper.leyline import GATE_FOR_TARGET, GateLevel, GateResult, SeedStage

S = SeedStage


def test_gate_levels():
    assert [(g.name, g.value) for g in GateLevel] == [
        ("G0", 0), ("G1", 1), ("G2", 2), ("G3", 3), ("G5", 5)]


def test_gate_for_target():
    assert dict(GATE_FOR_TARGET) == {
        S.GERMINATED: GateLevel.G0, S.TRAINING: GateLevel.G1, S.BLENDING: GateLevel.G2,
        S.HOLDING: GateLevel.G3, S.FOSSILIZED: GateLevel.G5,
    }


@pytest.mark.parametrize("score", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_score_must_be_finite_in_unit_interval(score):
    with pytest.raises(ValueError, match="score"):
        GateResult(GateLevel.G2, False, score)


@pytest.mark.parametrize("score", [0.0, 0.5, 1.0, 1])
def test_score_edges_accepted(score):
    assert GateResult(GateLevel.G2, False, score).score == score


def test_passed_result_cannot_have_failed_checks():
    with pytest.raises(ValueError, match="failed checks"):
        GateResult(GateLevel.G1, True, 1.0, (), ("x",))
    ok = GateResult(GateLevel.G1, True, 1.0, ("x",), ())
    assert ok.passed


def test_gate_result_is_frozen():
    result = GateResult(GateLevel.G0, True, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]


def test_refused_names_the_reason():
    r = GateResult.refused(S.BLENDING, "out_of_order", "nope")
    assert (r.gate, r.passed, r.score, r.checks_passed, r.checks_failed, r.message, r.target) == (
        GateLevel.G2, False, 0.0, (), ("out_of_order",), "nope", S.BLENDING)
    # A stage without a gate gives gate None.
    assert GateResult.refused(S.EMBARGOED, "mechanical", "m").gate is None


def test_from_checks_all_pass():
    r = GateResult.from_checks(GateLevel.G3, S.HOLDING, {"a": True, "b": True}, "detail")
    assert r.passed and r.score == 1.0
    assert r.checks_passed == ("a", "b") and r.checks_failed == ()
    assert r.message == "G3 -> HOLDING passed (detail)"
    assert r.target is S.HOLDING and r.gate is GateLevel.G3


def test_from_checks_some_fail_keeps_order_and_scores_fraction():
    r = GateResult.from_checks(GateLevel.G2, S.BLENDING,
                               {"a": True, "b": False, "c": True, "d": False})
    assert not r.passed
    assert r.score == 0.5
    assert r.checks_passed == ("a", "c")
    assert r.checks_failed == ("b", "d")
    assert r.message == "G2 -> BLENDING failed: b, d"


def test_from_checks_empty_passes():
    r = GateResult.from_checks(GateLevel.G1, S.TRAINING, {})
    assert r.passed and r.score == 1.0


def test_to_dict_is_json_ready():
    r = GateResult.from_checks(GateLevel.G5, S.FOSSILIZED, {"x": True, "y": False})
    assert r.to_dict() == {
        "gate": "G5", "passed": False, "score": 0.5, "checks_passed": ["x"],
        "checks_failed": ["y"], "message": "G5 -> FOSSILIZED failed: y", "target": "FOSSILIZED",
    }
    bare = GateResult(None, False, 0.0).to_dict()
    assert bare["gate"] is None and bare["target"] is None
