"""The quality gates G0, G1, G2, G3, G5: every pass and every failure tag."""

from __future__ import annotations

import math

import pytest
import torch

from esper.core.gates import (
    g0_identity,
    g1_germinated,
    g2_ready_to_blend,
    g3_blend_complete,
    g5_contribution,
)
from esper.kasmina import SlotState, germinate, transition
from esper.leyline import GateLevel, QualityGates, SeedStage, SlotTelemetry, TaskConfig

S = SeedStage
TASK = TaskConfig(max_epochs=25)  # dwell 5


def seeded(stage: S, *, alpha_mode: str = "scalar", gates: QualityGates | None = None):
    s = SlotState.dormant("mid", channels=3, task=TASK, gates=gates, alpha_mode=alpha_mode)
    s = germinate(s, "norm", "seed-1")
    path = {S.GERMINATED: [], S.TRAINING: [S.TRAINING], S.BLENDING: [S.TRAINING, S.BLENDING],
            S.HOLDING: [S.TRAINING, S.BLENDING, S.HOLDING],
            S.FOSSILIZED: [S.TRAINING, S.BLENDING, S.HOLDING, S.FOSSILIZED]}[stage]
    for target in path:
        s = transition(s, target)
    return s


def training(**metrics):
    base = {"epochs_in_stage": 5, "accuracy_at_stage_start": 50.0, "current_accuracy": 50.0,
            "seed_gradient_norm_ratio": 0.05, "isolation_violations": 10,
            "probe_loss_reduction": 0.0}
    s = seeded(S.TRAINING)
    return s.replace(metrics=s.metrics.replace(**{**base, **metrics}))


def blending_at(alpha, epochs=3, **kw):
    s = seeded(S.BLENDING, **kw)
    if isinstance(alpha, float):
        alpha = torch.tensor(alpha) if s.alpha_mode == "scalar" else torch.full((3,), alpha)
    return s.replace(alpha=alpha, metrics=s.metrics.replace(epochs_in_stage=epochs))


def _check(result, gate, target, passed, failed):
    assert result.gate is gate and result.target is target
    assert result.passed is (not failed)
    assert set(result.checks_failed) == set(failed)
    assert set(result.checks_passed).isdisjoint(result.checks_failed)
    n = len(result.checks_passed) + len(result.checks_failed)
    assert result.score == pytest.approx(len(result.checks_passed) / n)
    assert set(passed) <= set(result.checks_passed)
    for tag in failed:
        assert tag in result.message


# --------------------------------------------------------------------------- G0 / G1


def test_g0_passes_with_both_ids():
    _check(g0_identity("norm", "s1"), GateLevel.G0, S.GERMINATED,
           ["blueprint_id_present", "seed_id_present"], [])


@pytest.mark.parametrize(("bp", "sid", "failed"), [
    ("", "s", ["blueprint_id_missing"]), (None, "s", ["blueprint_id_missing"]),
    (3, "s", ["blueprint_id_missing"]), ("b", "", ["seed_id_missing"]),
    ("b", None, ["seed_id_missing"]), (None, None, ["blueprint_id_missing", "seed_id_missing"]),
])
def test_g0_failures(bp, sid, failed):
    _check(g0_identity(bp, sid), GateLevel.G0, S.GERMINATED, [], failed)


def test_g1():
    _check(g1_germinated(seeded(S.GERMINATED)), GateLevel.G1, S.TRAINING, ["germinated"], [])
    _check(g1_germinated(seeded(S.TRAINING)), GateLevel.G1, S.TRAINING, [],
           ["not_germinated"])


# --------------------------------------------------------------------------- G2


def test_g2_passes_at_every_threshold_exactly():
    _check(g2_ready_to_blend(training()), GateLevel.G2, S.BLENDING,
           ["in_training", "dwell_met", "probe_helps", "gradient_active", "isolation_ok"], [])


@pytest.mark.parametrize(("metrics", "failed"), [
    ({"epochs_in_stage": 4}, ["dwell_short"]),
    ({"probe_loss_reduction": -1e-6}, ["probe_loss_rose"]),
    ({"probe_loss_reduction": float("-inf")}, ["probe_loss_rose"]),
    ({"probe_loss_reduction": None}, ["probe_unmeasured"]),
    ({"seed_gradient_norm_ratio": 0.049}, ["gradient_low"]),
    ({"seed_gradient_norm_ratio": 0.0}, ["gradient_low"]),
    ({"seed_gradient_norm_ratio": None}, ["gradient_unmeasured"]),
    ({"isolation_violations": 11}, ["isolation_violated"]),
    ({"epochs_in_stage": 0, "probe_loss_reduction": -0.5, "seed_gradient_norm_ratio": None,
      "isolation_violations": 99},
     ["dwell_short", "probe_loss_rose", "gradient_unmeasured", "isolation_violated"]),
])
def test_g2_failures(metrics, failed):
    _check(g2_ready_to_blend(training(**metrics)), GateLevel.G2, S.BLENDING, [], failed)


@pytest.mark.parametrize(("moved", "tag"), [(True, "weights_moved"),
                                           (None, "weights_unmeasured")])
def test_g2_passes_a_seed_whose_weights_moved_or_were_not_measured(moved, tag):
    result = g2_ready_to_blend(training(weights_moved=moved))
    _check(result, GateLevel.G2, S.BLENDING, [tag], [])
    assert ("weights moved" if moved else "weights not measured") in result.message


def test_g2_refuses_a_seed_whose_weights_did_not_move():
    """Its gradients exist and its probe passed, but it did not train: no optimizer holds it."""
    result = g2_ready_to_blend(training(weights_moved=False))
    _check(result, GateLevel.G2, S.BLENDING,
           ["probe_helps", "gradient_active", "isolation_ok"], ["weights_frozen"])
    assert result.checks_failed == ("weights_frozen",)
    assert "weights frozen: none moved since TRAINING began" in result.message


def test_g2_not_in_training():
    s = seeded(S.BLENDING)
    s = s.replace(metrics=training().metrics)
    _check(g2_ready_to_blend(s), GateLevel.G2, S.BLENDING, [], ["not_in_training"])


def test_g2_ignores_the_hosts_progress_while_the_seed_is_invisible():
    """Issue 10, defect 5: 26.74 points of host progress let a x1e4 seed through G2."""
    s = training(accuracy_at_stage_start=58.0, current_accuracy=84.74,
                 probe_loss_reduction=-412.0)
    assert s.metrics.stage_improvement == pytest.approx(26.74)
    result = g2_ready_to_blend(s)
    _check(result, GateLevel.G2, S.BLENDING, [], ["probe_loss_rose"])
    assert "probe loss reduction -412.0000 at alpha 0.1" in result.message


def test_g2_uses_the_task_dwell_and_the_gate_thresholds():
    gates = QualityGates(min_probe_loss_reduction=0.02, min_seed_gradient_ratio=0.5,
                         max_isolation_violations=0)
    s = seeded(S.TRAINING, gates=gates)
    s = s.replace(task=TaskConfig(max_epochs=100), metrics=s.metrics.replace(
        epochs_in_stage=19, probe_loss_reduction=0.019,
        seed_gradient_norm_ratio=0.4, isolation_violations=1))
    _check(g2_ready_to_blend(s), GateLevel.G2, S.BLENDING, [],
           ["dwell_short", "probe_loss_rose", "gradient_low", "isolation_violated"])


# --------------------------------------------------------------------------- G3


@pytest.mark.parametrize("alpha", [0.96, 1.0])
def test_g3_passes(alpha):
    _check(g3_blend_complete(blending_at(alpha)), GateLevel.G3, S.HOLDING,
           ["in_blending", "alpha_reached", "blend_epochs_met"], [])


@pytest.mark.parametrize(("alpha", "epochs", "failed"), [
    (0.9, 3, ["alpha_low"]), (0.0, 3, ["alpha_low"]), (1.0, 2, ["blend_epochs_short"]),
    (0.5, 0, ["alpha_low", "blend_epochs_short"]),
])
def test_g3_failures(alpha, epochs, failed):
    _check(g3_blend_complete(blending_at(alpha, epochs)), GateLevel.G3, S.HOLDING, [], failed)


def test_g3_not_in_blending():
    s = seeded(S.HOLDING).replace(alpha=torch.tensor(1.0))
    s = s.replace(metrics=s.metrics.replace(epochs_in_stage=9))
    _check(g3_blend_complete(s), GateLevel.G3, S.HOLDING, [], ["not_in_blending"])


def test_g3_channel_mode_needs_every_channel():
    ok = blending_at(torch.tensor([1.0, 0.97, 0.99]), alpha_mode="channel")
    _check(g3_blend_complete(ok), GateLevel.G3, S.HOLDING, ["alpha_reached"], [])
    low = blending_at(torch.tensor([1.0, 0.5, 1.0]), alpha_mode="channel")
    _check(g3_blend_complete(low), GateLevel.G3, S.HOLDING, [], ["alpha_low"])


def test_g3_threshold_of_one_needs_full_alpha():
    gates = QualityGates(alpha_complete_threshold=1.0)
    _check(g3_blend_complete(blending_at(1.0, gates=gates)), GateLevel.G3, S.HOLDING, [], [])
    _check(g3_blend_complete(blending_at(0.999, gates=gates)), GateLevel.G3, S.HOLDING, [],
           ["alpha_low"])


def test_g3_alpha_exactly_at_threshold_passes():
    _check(g3_blend_complete(blending_at(0.95)), GateLevel.G3, S.HOLDING, ["alpha_reached"], [])


# --------------------------------------------------------------------------- G5


def holding(contribution: float | None = 1.0, epochs: int = 1, alpha=1.0, **kw):
    """A HOLDING seed with ``contribution`` recorded after ``epochs`` epochs at ``alpha``."""
    s = seeded(S.HOLDING, **kw)
    if isinstance(alpha, float):
        alpha = torch.tensor(alpha) if s.alpha_mode == "scalar" else torch.full((3,), alpha)
    return s.replace(alpha=alpha, metrics=s.metrics.replace(
        epochs_in_stage=epochs, holding_contribution=contribution))


G5_CHECKS = ["in_holding", "holding_epochs_met", "alpha_full", "counterfactual_present",
             "contribution_met"]


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_g5_passes_at_threshold(alpha_mode):
    s = holding(1.0, alpha_mode=alpha_mode)
    _check(g5_contribution(s), GateLevel.G5, S.FOSSILIZED, G5_CHECKS, [])
    r = g5_contribution(s, SlotTelemetry(50.0, counterfactual_contribution=1.0))
    _check(r, GateLevel.G5, S.FOSSILIZED, [*G5_CHECKS, "telemetry_finite"], [])


@pytest.mark.parametrize(("state", "failed"), [
    (lambda: holding(None), ["counterfactual_missing", "contribution_low"]),
    (lambda: holding(0.99), ["contribution_low"]),
    (lambda: holding(-3.0), ["contribution_low"]),
    (lambda: holding(5.0, epochs=0), ["holding_epochs_short"]),
    (lambda: holding(5.0, alpha=0.999), ["alpha_not_full"]),
    (lambda: holding(5.0, alpha=torch.tensor([1.0, 0.5, 1.0]), alpha_mode="channel"),
     ["alpha_not_full"]),
    (lambda: holding(None, epochs=0, alpha=0.9),
     ["holding_epochs_short", "alpha_not_full", "counterfactual_missing", "contribution_low"]),
])
def test_g5_failures(state, failed):
    _check(g5_contribution(state()), GateLevel.G5, S.FOSSILIZED, [], failed)


@pytest.mark.parametrize("telemetry", [
    SlotTelemetry(50.0, counterfactual_contribution=math.nan),
    SlotTelemetry(50.0, counterfactual_contribution=math.inf),
    SlotTelemetry(50.0, counterfactual_contribution=5.0, finite=False),
    SlotTelemetry(math.nan, counterfactual_contribution=5.0),
])
def test_g5_refuses_a_non_finite_request_reading(telemetry):
    _check(g5_contribution(holding(5.0), telemetry), GateLevel.G5, S.FOSSILIZED, G5_CHECKS,
           ["telemetry_non_finite"])


def test_g5_ignores_the_request_counterfactual():
    """G5 judges the HOLDING record; the reading handed to the request does not count."""
    low = g5_contribution(holding(0.5), SlotTelemetry(50.0, counterfactual_contribution=50.0))
    _check(low, GateLevel.G5, S.FOSSILIZED, [], ["contribution_low"])
    ok = g5_contribution(holding(2.0), SlotTelemetry(50.0, counterfactual_contribution=-3.0))
    _check(ok, GateLevel.G5, S.FOSSILIZED, G5_CHECKS, [])
    _check(g5_contribution(holding(2.0), SlotTelemetry(50.0)), GateLevel.G5, S.FOSSILIZED,
           G5_CHECKS, [])


def test_g5_not_in_holding():
    s = seeded(S.BLENDING)
    s = s.replace(alpha=torch.tensor(1.0),
                  metrics=s.metrics.replace(epochs_in_stage=3, holding_contribution=5.0))
    _check(g5_contribution(s), GateLevel.G5, S.FOSSILIZED, [], ["not_in_holding"])


def test_g5_uses_gate_thresholds():
    gates = QualityGates(min_fossilize_contribution=3.0, min_holding_epochs=2)
    _check(g5_contribution(holding(2.9, epochs=2, gates=gates)), GateLevel.G5, S.FOSSILIZED,
           [], ["contribution_low"])
    _check(g5_contribution(holding(3.0, epochs=1, gates=gates)), GateLevel.G5, S.FOSSILIZED,
           [], ["holding_epochs_short"])
    _check(g5_contribution(holding(3.0, epochs=2, gates=gates)), GateLevel.G5, S.FOSSILIZED,
           G5_CHECKS, [])


def test_gates_are_pure():
    s = training()
    before = s.replace()
    for gate in (g1_germinated, g2_ready_to_blend, g3_blend_complete):
        gate(s)
    g5_contribution(s, SlotTelemetry(1.0, counterfactual_contribution=2.0))
    assert s == before and s.last_gate == before.last_gate
