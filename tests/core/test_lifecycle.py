"""germinate and step: every mechanical transition, dwell, ramp, timeout and embargo."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from esper.core.state import stage_coefficients
from esper.kasmina import (
    SeedMetrics,
    SlotState,
    alpha_at,
    events,
    fossilize,
    germinate,
    prune,
    set_alpha,
    step,
    transition,
)
from esper.leyline import (
    VALID_TRANSITIONS,
    EventType,
    GateLevel,
    QualityGates,
    SeedStage,
    SlotTelemetry,
    TaskConfig,
)

S = SeedStage
LIVE = (S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING)


def tel(accuracy: float = 50.0, ratio: float | None = 0.5, probe: float | None = 0.01,
        **kw) -> SlotTelemetry:
    return SlotTelemetry(accuracy, seed_gradient_norm_ratio=ratio, probe_loss_reduction=probe,
                         **kw)


def coefficients(s: SlotState) -> tuple[list[float] | float, float, float]:
    return s.alpha.tolist(), float(s.b), float(s.g)


def assert_stage_coefficients(s: SlotState) -> None:
    a, b, g = stage_coefficients(s.stage, s.isolate)
    assert (float(s.b), float(s.g)) == (b, g)
    if a is not None:
        assert bool((s.alpha == a).all())


def steps_until_leaving(s: SlotState, telemetry, limit: int = 1000) -> tuple[SlotState, int]:
    """Step until the stage changes; returns the new state and the number of steps."""
    stage = s.stage
    for n in range(1, limit + 1):
        s = step(s, telemetry(n) if callable(telemetry) else telemetry)
        if s.stage != stage:
            return s, n
    raise AssertionError(f"still {stage.name} after {limit} steps")


# --------------------------------------------------------------------------- germinate


def test_germinate(slot_at):
    d = slot_at(S.DORMANT)
    s = germinate(d, "norm", "seed-7", blend_algorithm_id="linear", seed_params=99)
    assert s.stage is S.GERMINATED
    assert (s.blueprint_id, s.seed_id, s.seed_params, s.blend_algorithm_id) == (
        "norm", "seed-7", 99, "linear")
    assert coefficients(s) == (0.0, 1.0, 1.0)
    assert s.metrics == SeedMetrics()
    assert s.last_gate.gate is GateLevel.G0 and s.last_gate.passed
    assert s.gate_evaluations == d.gate_evaluations + 1
    assert s.transitions == 1 and len(s.history) == 1
    record = s.history[-1]
    assert (record.from_stage, record.to_stage, record.reason, record.seed_id, record.epoch) == (
        S.DORMANT, S.GERMINATED, "germinate", "seed-7", d.epoch)
    assert s.has_seed


@pytest.mark.parametrize("stage", [s for s in S if s is not S.DORMANT])
def test_germinate_refuses_non_dormant_with_runtime_error(slot_at, stage):
    with pytest.raises(RuntimeError, match="not DORMANT"):
        germinate(slot_at(stage), "norm", "seed-2")


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (("", "s"), {}, "blueprint_id_missing"),
    (("b", ""), {}, "seed_id_missing"),
    ((None, "s"), {}, "blueprint_id_missing"),
    (("b", None), {}, "seed_id_missing"),
    (("b", "s"), {"blend_algorithm_id": "cosine"}, "unknown blend algorithm"),
    (("b", "s"), {"seed_params": -1}, "seed_params"),
    (("b", "s"), {"seed_params": 1.5}, "seed_params"),
    (("b", "s"), {"seed_params": True}, "seed_params"),
])
def test_germinate_rejects_bad_arguments(slot_at, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        germinate(slot_at(S.DORMANT), *args, **kwargs)


def test_germinate_type_error_for_non_state():
    with pytest.raises(TypeError, match="SlotState"):
        germinate("state", "b", "s")  # type: ignore[arg-type]


@pytest.mark.parametrize("algo", ["linear", "sigmoid", "gated"])
def test_germinate_accepts_every_blend_algorithm(slot_at, algo):
    assert germinate(slot_at(S.DORMANT), "b", "s", blend_algorithm_id=algo).blend_algorithm_id \
        == algo


# --------------------------------------------------------------------------- simple steps


def test_step_dormant_only_counts_the_epoch(slot_at):
    d = slot_at(S.DORMANT)
    s = step(d, SlotTelemetry(math.nan, finite=False))
    assert s.stage is S.DORMANT and s.epoch == d.epoch + 1
    assert s.replace(epoch=d.epoch) == d
    assert s.history == d.history and s.metrics == d.metrics


def test_step_unknown_initializes_to_dormant(slot_at):
    s = step(slot_at(S.UNKNOWN), tel())
    assert s.stage is S.DORMANT
    assert s.history[-1].reason == "initialize"


def test_step_type_errors(slot_at):
    with pytest.raises(TypeError, match="SlotTelemetry"):
        step(slot_at(S.TRAINING), {"accuracy": 50.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SlotTelemetry"):
        step(slot_at(S.DORMANT), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SlotState"):
        step(None, tel())  # type: ignore[arg-type]


def test_germinated_to_training_on_next_step(slot_at):
    g = slot_at(S.GERMINATED)
    s = step(g, tel(42.0))
    assert s.stage is S.TRAINING
    assert s.history[-1].reason == "g1"
    assert s.last_gate.gate is GateLevel.G1 and s.last_gate.passed
    assert coefficients(s) == (0.0, 1.0, 1.0)
    m = s.metrics
    assert (m.epochs_total, m.epochs_in_stage) == (1, 0)
    assert m.accuracy_at_germination == m.accuracy_at_stage_start == m.current_accuracy == 42.0


# --------------------------------------------------------------------------- training dwell


@pytest.mark.parametrize(("max_epochs", "fraction", "dwell"), [
    (1, 0.2, 1), (5, 0.2, 1), (6, 0.2, 2), (25, 0.2, 5), (26, 0.2, 6), (40, 0.2, 8),
    (10, 0.0, 1), (10, 1.0, 10), (12, 0.25, 3),
])
def test_training_dwell_then_g2(slot_at, max_epochs, fraction, dwell):
    task = TaskConfig(max_epochs=max_epochs, train_to_blend_fraction=fraction)
    s = slot_at(S.TRAINING, task=task)
    assert task.training_dwell == dwell
    gates_before = s.gate_evaluations
    start = s.metrics.current_accuracy
    for n in range(1, dwell):
        s = step(s, tel(start + n))
        assert s.stage is S.TRAINING
        assert s.gate_evaluations == gates_before  # G2 is not even evaluated before the dwell
    s = step(s, tel(start + dwell))
    assert s.stage is S.BLENDING
    assert s.last_gate.gate is GateLevel.G2 and s.last_gate.passed
    assert s.history[-1].reason == "g2" and s.history[-1].epochs_in_stage == dwell
    assert s.metrics.accuracy_at_blending_start == start + dwell
    assert s.metrics.blend_step == 0 and s.metrics.epochs_in_stage == 0
    assert float(s.alpha) == 0.0 and coefficients(s)[1:] == (0.0, 1.0)


def test_g2_failure_in_step_keeps_training_and_retries_every_epoch(slot_at):
    s = slot_at(S.TRAINING, task=TaskConfig(max_epochs=10))  # dwell 2
    base = s.metrics.current_accuracy
    s = step(s, tel(base + 0.1, probe=-0.3))
    s = step(s, tel(base + 20.0, probe=-0.2))  # dwell met; the host's progress is not judged
    assert s.stage is S.TRAINING
    assert s.last_gate.gate is GateLevel.G2 and s.last_gate.checks_failed == ("probe_loss_rose",)
    n = s.gate_evaluations
    s = step(s, tel(base + 30.0, probe=-1e-9))
    assert s.stage is S.TRAINING and s.gate_evaluations == n + 1
    s = step(s, tel(base, probe=0.0))  # exactly the threshold
    assert s.stage is S.BLENDING


def test_g2_gradient_unmeasured_and_last_ratio_kept(slot_at):
    s = slot_at(S.GERMINATED)
    s = step(s, tel(50.0, ratio=None))
    s = step(s, tel(60.0, ratio=None))
    assert s.stage is S.TRAINING and "gradient_unmeasured" in s.last_gate.checks_failed
    s = step(s, tel(61.0, ratio=0.01))
    assert s.last_gate.checks_failed == ("gradient_low",)
    s = step(s, tel(62.0, ratio=0.2))
    assert s.stage is S.BLENDING
    assert s.metrics.seed_gradient_norm_ratio == 0.2
    s = step(s, tel(63.0, ratio=None))
    assert s.metrics.seed_gradient_norm_ratio == 0.2  # None keeps the last measurement


def test_g2_isolation_violations_accumulate(slot_at):
    s = slot_at(S.GERMINATED)
    s = step(s, tel(50.0, isolation_violations=6))
    s = step(s, tel(60.0, isolation_violations=5))  # 11 > 10
    assert s.stage is S.TRAINING
    assert s.last_gate.checks_failed == ("isolation_violated",)
    assert s.metrics.isolation_violations == 11


def test_g2_at_max_violations_passes(slot_at):
    s = slot_at(S.GERMINATED)
    s = step(s, tel(50.0, isolation_violations=4))
    s = step(s, tel(60.0, isolation_violations=6))
    assert s.stage is S.BLENDING


# --------------------------------------------------------------------------- blending ramp


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _expected_holding_epoch(algo: str, steps: int, gates: QualityGates) -> int:
    for k in range(1, 1000):
        alpha = _f32(alpha_at(algo, min(k, steps), steps))
        if alpha >= gates.alpha_complete_threshold and k >= gates.min_blending_epochs:
            return k
    raise AssertionError


@pytest.mark.parametrize("algo", ["linear", "sigmoid", "gated"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("min_blend", [0, 1, 3, 6])
def test_blend_ramp_follows_schedule_and_g3_timing(slot_at, algo, steps, min_blend):
    gates = QualityGates(min_blending_epochs=min_blend)
    task = TaskConfig(max_epochs=5, blending_steps=steps)
    s = slot_at(S.BLENDING, task=task, gates=gates, algo=algo)
    expected_hold = _expected_holding_epoch(algo, steps, gates)
    previous = 0.0
    for k in range(1, max(steps, expected_hold) + 3):
        s = step(s, tel(70.0 + k, counterfactual_contribution=5.0))
        alpha = float(s.alpha)
        assert alpha == _f32(alpha_at(algo, min(k, steps), steps))
        assert previous <= alpha <= 1.0
        previous = alpha
        if k >= steps:
            assert alpha == 1.0  # exactly 1.0 from the last step on
        if k < expected_hold:
            assert s.stage is S.BLENDING
            assert s.last_gate.gate is GateLevel.G3 and not s.last_gate.passed
        else:
            assert s.stage is S.HOLDING  # and never fossilizes on its own
        if k == expected_hold:
            assert s.history[-1].reason == "g3" and s.last_gate.passed
            assert s.history[-1].epochs_in_stage == k
        assert coefficients(s)[1:] == (0.0, 1.0)


def test_default_sigmoid_enters_holding_on_fourth_blend_epoch(slot_at):
    s = slot_at(S.BLENDING)
    for _ in range(3):
        s = step(s, tel())
        assert s.stage is S.BLENDING
    s = step(s, tel())
    assert s.stage is S.HOLDING and 0.95 <= float(s.alpha) < 1.0
    s = step(s, tel())
    assert float(s.alpha) == 1.0


def test_default_linear_enters_holding_at_full_alpha(slot_at):
    s = slot_at(S.BLENDING, algo="linear")
    s, n = steps_until_leaving(s, tel())
    assert (s.stage, n, float(s.alpha)) == (S.HOLDING, 5, 1.0)


def test_ramp_never_lowers_a_set_alpha(slot_at):
    from esper.kasmina import set_alpha

    s = set_alpha(slot_at(S.BLENDING, algo="linear"), 0.7)
    s = step(s, tel())  # schedule 0.2 < 0.7
    assert float(s.alpha) == pytest.approx(0.7)
    s = step(s, tel())
    s = step(s, tel())
    s = step(s, tel())  # schedule 0.8
    assert float(s.alpha) == pytest.approx(0.8)


@pytest.mark.parametrize(("topology", "g"), [("cnn", 1.0), ("transformer", 0.0)])
def test_isolation_coefficient_while_blending_by_topology(slot_at, topology, g):
    task = TaskConfig(topology=topology, max_epochs=5)
    for stage in (S.BLENDING, S.HOLDING):
        assert float(slot_at(stage, task=task).g) == g
    for stage in (S.GERMINATED, S.TRAINING):
        assert float(slot_at(stage, task=task).g) == 1.0
    assert float(slot_at(S.FOSSILIZED, task=task).g) == 0.0


# --------------------------------------------------------------------------- holding


@pytest.mark.parametrize(("max_epochs", "timeout"), [
    (5, 5), (25, 5), (50, 5), (51, 6), (73, 8), (100, 10),
])
def test_holding_times_out_at_the_exact_epoch(slot_at, max_epochs, timeout):
    task = TaskConfig(max_epochs=max_epochs, train_to_blend_fraction=0.0)
    s = slot_at(S.HOLDING, task=task)
    assert task.holding_timeout == timeout
    for _ in range(timeout - 1):
        s = step(s, tel(90.0, counterfactual_contribution=50.0))  # huge, still no fossilize
        assert s.stage is S.HOLDING
    s = step(s, tel(90.0, counterfactual_contribution=50.0))
    assert s.stage is S.PRUNED
    assert s.prune_reason == "holding_timeout" == s.history[-1].reason
    assert s.history[-1].epochs_in_stage == timeout
    assert coefficients(s) == (0.0, 0.0, 1.0)


def test_holding_without_counterfactual_also_times_out(slot_at):
    s, n = steps_until_leaving(slot_at(S.HOLDING), tel())
    assert (s.stage, n, s.prune_reason) == (S.PRUNED, 5, "holding_timeout")


@pytest.mark.parametrize("value", [-0.001, -5.0, -1e300])
def test_negative_counterfactual_in_holding_prunes_at_once(slot_at, value):
    s = step(slot_at(S.HOLDING), tel(counterfactual_contribution=value))
    assert s.stage is S.PRUNED
    assert s.prune_reason == "negative_counterfactual" == s.history[-1].reason
    assert s.metrics.counterfactual_contribution == value


@pytest.mark.parametrize("value", [0.0, -0.0, 0.5])
def test_non_negative_counterfactual_keeps_holding(slot_at, value):
    s = step(slot_at(S.HOLDING), tel(counterfactual_contribution=value))
    assert s.stage is S.HOLDING


@pytest.mark.parametrize("stage", [S.TRAINING, S.BLENDING])
def test_negative_counterfactual_outside_holding_does_not_prune(slot_at, stage):
    s = step(slot_at(stage), tel(counterfactual_contribution=-5.0))
    assert s.stage is not S.PRUNED


# --------------------------------------------------------------------------- holding validation

# The trainer's timing: three blend steps, so G3 passes with alpha exactly 1.0.
FULL_ALPHA_TASK = TaskConfig(max_epochs=5, blending_steps=3)


def reach_holding(alpha_mode: str = "scalar") -> SlotState:
    """Step a seed into HOLDING with a huge counterfactual measured every epoch."""
    s = SlotState.dormant("mid", channels=4, task=FULL_ALPHA_TASK, alpha_mode=alpha_mode)
    s = germinate(s, "norm", "seed-1")
    accuracy = 50.0
    while s.stage is not S.HOLDING:
        accuracy += 1.0
        s = step(s, tel(accuracy, counterfactual_contribution=50.0))
    assert bool((s.alpha == 1.0).all()) and s.metrics.epochs_in_stage == 0
    return s


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_seed_reaching_holding_cannot_fossilize_in_that_epoch(alpha_mode):
    """The epoch's counterfactual was measured under BLENDING: G5 waits for HOLDING's own."""
    s = reach_holding(alpha_mode)
    after, result = fossilize(s, tel(57.0, counterfactual_contribution=50.0))
    assert not result.passed and after.stage is S.HOLDING
    assert "holding_epochs_short" in result.checks_failed
    assert "counterfactual_missing" in result.checks_failed
    assert after.metrics.holding_contribution is None


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_one_holding_epoch_at_full_alpha_then_fossilize(alpha_mode):
    s = reach_holding(alpha_mode)
    s = step(s, tel(60.0, counterfactual_contribution=1.0))  # measured in HOLDING at alpha 1
    assert s.stage is S.HOLDING and s.metrics.epochs_in_stage == 1
    assert s.metrics.holding_contribution == 1.0
    s, result = fossilize(s, tel(60.0, counterfactual_contribution=1.0))
    assert result.passed and result.gate is GateLevel.G5 and s.stage is S.FOSSILIZED
    assert "holding_epochs_met" in result.checks_passed
    assert s.history[-1].from_stage is S.HOLDING and s.history[-1].epochs_in_stage == 1


def test_holding_below_threshold_does_not_fossilize_on_a_large_request_reading():
    s = step(reach_holding(), tel(60.0, counterfactual_contribution=0.5))
    assert s.metrics.holding_contribution == 0.5
    after, result = fossilize(s, tel(60.0, counterfactual_contribution=50.0))
    assert not result.passed and result.checks_failed == ("contribution_low",)
    assert after.stage is S.HOLDING
    # and a small reading handed to the request does not spoil a validated seed
    s = step(s, tel(60.0, counterfactual_contribution=3.0))
    after, result = fossilize(s, tel(60.0, counterfactual_contribution=0.0))
    assert result.passed and after.stage is S.FOSSILIZED


def test_min_holding_epochs_is_met_by_epochs_in_holding():
    gates = QualityGates(min_holding_epochs=3)
    s = reach_holding().replace(gates=gates)
    for epochs in (1, 2, 3):
        s = step(s, tel(60.0, counterfactual_contribution=2.0))
        _, result = fossilize(s, tel(60.0, counterfactual_contribution=2.0))
        assert s.metrics.epochs_in_stage == epochs
        assert result.passed is (epochs >= 3)
        assert ("holding_epochs_short" in result.checks_failed) is (epochs < 3)


def test_holding_step_below_full_alpha_records_nothing(slot_at):
    s = slot_at(S.HOLDING)  # the default sigmoid ramp enters HOLDING at alpha 0.976
    assert float(s.alpha) < 1.0
    s = step(s, tel(counterfactual_contribution=3.0))
    assert float(s.alpha) == 1.0  # the ramp finished in this step, after the measurement
    assert s.metrics.holding_contribution is None
    assert s.metrics.counterfactual_contribution == 3.0
    _, result = fossilize(s, tel(counterfactual_contribution=3.0))
    assert not result.passed and result.checks_failed == ("counterfactual_missing",
                                                           "contribution_low")


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_alpha_set_below_one_in_holding_records_nothing_and_blocks_g5(alpha_mode):
    s = step(reach_holding(alpha_mode), tel(60.0, counterfactual_contribution=2.0))
    assert s.metrics.holding_contribution == 2.0
    below = torch.tensor([1.0, 1.0, 0.999, 1.0]) if alpha_mode == "channel" else 0.999
    s = set_alpha(s, below)
    s = step(s, tel(60.0, counterfactual_contribution=7.0))
    assert s.metrics.holding_contribution == 2.0  # the reading at alpha < 1 is not kept
    _, result = fossilize(s, tel(60.0, counterfactual_contribution=7.0))
    assert not result.passed and result.checks_failed == ("alpha_not_full",)
    s = set_alpha(s, torch.ones(4) if alpha_mode == "channel" else 1.0)
    s = step(s, tel(60.0, counterfactual_contribution=7.0))
    assert s.metrics.holding_contribution == 7.0


def test_holding_step_without_a_finite_counterfactual_keeps_the_record():
    s = step(reach_holding(), tel(60.0, counterfactual_contribution=2.0))
    s = step(s, tel(60.0))
    assert s.metrics.holding_contribution == 2.0


def test_holding_record_is_cleared_when_a_stage_is_entered():
    s = step(reach_holding(), tel(60.0, counterfactual_contribution=2.0))
    assert prune(s, "manual").metrics.holding_contribution is None
    fossil, _ = fossilize(s, tel(60.0))
    assert fossil.stage is S.FOSSILIZED and fossil.metrics.holding_contribution is None


# --------------------------------------------------------------------------- non-finite


NON_FINITE = [
    SlotTelemetry(math.nan), SlotTelemetry(math.inf), SlotTelemetry(-math.inf),
    SlotTelemetry(50.0, counterfactual_contribution=math.nan),
    SlotTelemetry(50.0, counterfactual_contribution=-math.inf),
    SlotTelemetry(50.0, seed_gradient_norm_ratio=math.inf),
    SlotTelemetry(50.0, seed_gradient_norm_ratio=0.5, finite=False),
]


@pytest.mark.parametrize("stage", LIVE)
@pytest.mark.parametrize("telemetry", NON_FINITE)
def test_non_finite_telemetry_prunes_a_live_seed(slot_at, stage, telemetry):
    before = slot_at(stage)
    s = step(before, telemetry)
    assert s.stage is S.PRUNED
    assert s.prune_reason == "non_finite" == s.history[-1].reason
    assert s.history[-1].from_stage is stage
    assert coefficients(s) == (0.0, 0.0, 1.0)
    m = s.metrics
    for value in (m.current_accuracy, m.best_accuracy, m.counterfactual_contribution,
                  m.seed_gradient_norm_ratio):
        assert value is None or math.isfinite(value)  # non-finite numbers are not kept


@pytest.mark.parametrize("telemetry", [*NON_FINITE, tel(counterfactual_contribution=-50.0)])
def test_fossil_survives_any_telemetry(slot_at, telemetry):
    f = slot_at(S.FOSSILIZED)
    s = f
    for _ in range(20):
        s = step(s, telemetry)
        assert s.stage is S.FOSSILIZED
        assert coefficients(s) == (1.0, 0.0, 0.0)
    assert s.metrics.epochs_total == f.metrics.epochs_total + 20
    assert s.epoch == f.epoch + 20
    assert s.history == f.history


@pytest.mark.parametrize("stage", [S.PRUNED, S.EMBARGOED, S.RESETTING, S.DORMANT])
def test_non_finite_telemetry_is_ignored_without_a_seed(slot_at, stage):
    s = step(slot_at(stage), SlotTelemetry(math.nan, finite=False))
    assert s.stage in VALID_TRANSITIONS[stage] | {stage}
    assert s.prune_reason != "non_finite"


# --------------------------------------------------------------------------- embargo / reset


def _embargo_epochs_taken(s: SlotState, limit: int = 1000) -> tuple[SlotState, int]:
    """From PRUNED, step to RESETTING; return the state and epochs spent EMBARGOED."""
    assert s.stage is S.PRUNED
    for _ in range(limit):
        s = step(s, tel())
        assert s.stage in (S.EMBARGOED, S.RESETTING)
        if s.stage is S.RESETTING:
            entered = next(r.epoch for r in reversed(s.history) if r.to_stage is S.EMBARGOED)
            left = s.history[-1]
            assert (left.from_stage, left.to_stage) == (S.EMBARGOED, S.RESETTING)
            return s, left.epoch - entered
    raise AssertionError("embargo never ended")


@pytest.mark.parametrize("embargo", [1, 2, 5, 9])
def test_embargo_lasts_exactly_embargo_epochs(slot_at, embargo):
    s = slot_at(S.PRUNED, task=TaskConfig(max_epochs=5, embargo_epochs=embargo))
    s, taken = _embargo_epochs_taken(s)
    assert taken == embargo
    assert s.history[-1].reason == "embargo_over"
    assert s.history[-1].epochs_in_stage == embargo


def test_zero_embargo_takes_no_epoch(slot_at):
    s = slot_at(S.PRUNED, task=TaskConfig(max_epochs=5, embargo_epochs=0))
    _, taken = _embargo_epochs_taken(s)
    assert taken == 0


def test_zero_embargo_still_passes_every_stage(slot_at):
    s = slot_at(S.PRUNED, task=TaskConfig(max_epochs=5, embargo_epochs=0))
    seen = [s.stage]
    while s.stage is not S.DORMANT:
        s = step(s, tel())
        seen.append(s.stage)
    assert seen[0] is S.PRUNED and seen[-1] is S.DORMANT
    assert [r.to_stage for r in s.history[-3:]] == [S.EMBARGOED, S.RESETTING, S.DORMANT]
    assert len(seen) <= 5


def _prune_after_epochs(slot_at, stage, epochs, embargo=5):
    s = slot_at(stage, task=TaskConfig(max_epochs=25, embargo_epochs=embargo))
    for _ in range(epochs):
        s = step(s, tel(s.metrics.current_accuracy or 50.0, ratio=0.0))  # G2 fails: stays
    assert s.stage is stage
    return prune(s, "manual")


@pytest.mark.parametrize("epochs", [1, 3, 8])
def test_embargo_length_does_not_depend_on_the_pruned_stage(slot_at, epochs):
    s = _prune_after_epochs(slot_at, S.TRAINING, epochs)
    _, taken = _embargo_epochs_taken(s)
    assert taken == 5


def test_embargo_after_holding_timeout(slot_at):
    s, _ = steps_until_leaving(slot_at(S.HOLDING), tel())
    assert s.prune_reason == "holding_timeout"
    _, taken = _embargo_epochs_taken(s)
    assert taken == 5


def test_records_out_of_failure_stages_count_their_own_epochs(slot_at):
    s = _prune_after_epochs(slot_at, S.TRAINING, 3)
    while s.stage is not S.DORMANT:
        s = step(s, tel())
    by_source = {r.from_stage: r.epochs_in_stage for r in s.history}
    assert by_source[S.PRUNED] <= 1  # not the 3 TRAINING epochs
    assert by_source[S.EMBARGOED] == 5
    assert by_source[S.RESETTING] <= 1


def test_pruned_embargoed_resetting_dormant(slot_at):
    p = slot_at(S.PRUNED)
    assert p.prune_reason == "test" and p.seed_id == "seed-1"
    e = step(p, tel())
    assert e.stage is S.EMBARGOED and e.history[-1].reason == "embargo"
    assert coefficients(e) == (0.0, 0.0, 1.0)
    r = e
    while r.stage is S.EMBARGOED:
        r = step(r, tel())
    assert r.stage is S.RESETTING
    d = step(r, tel())
    assert d.stage is S.DORMANT and d.history[-1].reason == "reset"
    assert (d.blueprint_id, d.seed_id, d.seed_params, d.prune_reason, d.last_gate) == (
        None, None, 0, None, None)
    assert d.metrics == SeedMetrics()
    assert coefficients(d) == (0.0, 0.0, 1.0)
    assert d.history[-1].seed_id == "seed-1"  # the record remembers which seed left
    again = germinate(d, "conv", "seed-2")
    assert again.stage is S.GERMINATED and again.seed_id == "seed-2"


def test_germinate_refused_during_embargo(slot_at):
    s = slot_at(S.EMBARGOED)
    with pytest.raises(RuntimeError):
        germinate(s, "norm", "seed-9")


# --------------------------------------------------------------------------- whole runs


def test_docstring_example_dormant_to_fossilized():
    """The module docstring's example, run as written (so the two cannot drift apart)."""
    import textwrap

    from esper.core import lifecycle

    doc = lifecycle.__doc__ or ""
    example = textwrap.dedent(doc.split("Example (DORMANT to FOSSILIZED)::", 1)[1])
    scope = {"SlotState": SlotState, "TaskConfig": TaskConfig, "SlotTelemetry": SlotTelemetry,
             "germinate": germinate, "step": step, "fossilize": fossilize}
    exec(compile(example, "esper.core.lifecycle docstring", "exec"), scope)
    state, result = scope["state"], scope["result"]
    assert result.passed and state.stage is S.FOSSILIZED
    assert [(r.from_stage, r.to_stage) for r in state.history] == [
        (S.DORMANT, S.GERMINATED), (S.GERMINATED, S.TRAINING), (S.TRAINING, S.BLENDING),
        (S.BLENDING, S.HOLDING), (S.HOLDING, S.FOSSILIZED)]
    assert coefficients(state) == (1.0, 0.0, 0.0)
    assert state.metrics.improvement == 8.0


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_every_reached_stage_has_its_coefficients(slot_at, alpha_mode):
    for stage in S:
        s = slot_at(stage, alpha_mode=alpha_mode)
        assert s.stage is stage
        assert_stage_coefficients(s)
        expected_shape = () if alpha_mode == "scalar" else (4,)
        assert tuple(s.alpha.shape) == expected_shape


def test_channel_mode_full_run(slot_at):
    s = slot_at(S.BLENDING, alpha_mode="channel", algo="linear")
    for k in range(1, 6):
        s = step(s, tel())
        assert torch.equal(s.alpha, torch.full((4,), _f32(k / 5)))
    assert s.stage is S.HOLDING
    s = step(s, tel(counterfactual_contribution=3.0))  # an epoch in HOLDING at alpha 1
    s, result = fossilize(s, tel(counterfactual_contribution=3.0))
    assert result.passed
    assert torch.equal(s.alpha, torch.ones(4)) and s.alpha.shape == (4,)


def test_long_run_keeps_history_at_100_and_events_work(slot_at):
    task = TaskConfig(max_epochs=5, embargo_epochs=0)
    s = slot_at(S.DORMANT, task=task)
    cycles = 30
    for i in range(cycles):
        evs = []
        ops = [partial(germinate, blueprint_id="norm", seed_id=f"seed-{i}"),
               partial(prune, reason=f"cycle-{i}"), *[partial(step, telemetry=tel())] * 3]
        for op in ops:
            before, s = s, op(s)
            evs.extend(events(before, s))
        assert s.stage is S.DORMANT
        kinds = [e.type for e in evs]
        assert kinds == [EventType.SEED_GATE_EVALUATED, EventType.SEED_GERMINATED,
                         EventType.SEED_STAGE_CHANGED, EventType.SEED_STAGE_CHANGED,
                         EventType.SEED_PRUNED, EventType.SEED_STAGE_CHANGED,
                         EventType.SEED_STAGE_CHANGED, EventType.SEED_STAGE_CHANGED]
        assert all(e.seed_id == f"seed-{i}" for e in evs)
        assert evs[4].payload["reason"] == f"cycle-{i}"
    per_cycle = 5  # germinate, prune, embargo, embargo_over, reset
    assert s.transitions == cycles * per_cycle > 100
    assert len(s.history) == 100
    assert s.history[-1].to_stage is S.DORMANT
    assert s.history[-1].seed_id == f"seed-{cycles - 1}"
    for prev, record in zip(s.history, s.history[1:], strict=False):
        assert record.from_stage is prev.to_stage
        assert record.to_stage in VALID_TRANSITIONS[record.from_stage]
    # events across more than 100 transitions report the records that are kept
    all_events = events(slot_at(S.DORMANT, task=task), s)
    changes = [e for e in all_events if e.type is EventType.SEED_STAGE_CHANGED]
    assert len(changes) == 100
    # and the slot still works
    g = germinate(s, "norm", "last")
    assert len(g.history) == 100 and g.transitions == s.transitions + 1
    assert [e.type for e in events(s, g)][-1] is EventType.SEED_STAGE_CHANGED


def test_training_entered_by_transition_measures_improvement_from_first_reading(slot_at):
    s = transition(slot_at(S.GERMINATED), S.TRAINING)
    assert s.metrics.accuracy_at_stage_start is None
    for accuracy in (50.0, 51.0, 52.0, 53.0):
        s = step(s, tel(accuracy))
    assert s.stage is S.BLENDING
