"""Explicit requests: advance, fossilize, prune, transition, set_alpha."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from esper.core.state import stage_coefficients
from esper.errors import InvalidTransitionError
from esper.kasmina import SlotState, advance, fossilize, prune, set_alpha, step, transition
from esper.leyline import (
    GATE_FOR_TARGET,
    VALID_TRANSITIONS,
    GateLevel,
    SeedStage,
    SlotTelemetry,
    TaskConfig,
    is_valid_transition,
)

S = SeedStage
LIVE = (S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING)
NOT_LIVE = [s for s in S if s not in LIVE]
MECHANICAL = {(S.UNKNOWN, S.DORMANT), (S.DORMANT, S.GERMINATED), (S.PRUNED, S.EMBARGOED),
              (S.EMBARGOED, S.RESETTING), (S.RESETTING, S.DORMANT)}
PAIRS = [(a, b) for a in S for b in S]


def tel(accuracy: float = 60.0, **kw) -> SlotTelemetry:
    kw.setdefault("seed_gradient_norm_ratio", 0.5)
    kw.setdefault("probe_loss_reduction", 0.01)
    return SlotTelemetry(accuracy, **kw)


def assert_coefficients(s: SlotState) -> None:
    a, b, g = stage_coefficients(s.stage, s.isolate)
    assert (float(s.b), float(s.g)) == (b, g)
    if a is not None:
        assert bool((s.alpha == a).all())


def assert_unchanged(after: SlotState, before_copy: SlotState) -> None:
    assert after == before_copy
    assert torch.equal(after.alpha, before_copy.alpha)


# --------------------------------------------------------------------------- advance refusals


def _expected_refusal(source: S, target: S) -> str | None:
    if target not in VALID_TRANSITIONS[source]:
        return "out_of_order"
    if (source, target) in MECHANICAL:
        return "mechanical"
    if target is S.PRUNED:
        return "use_prune"
    return None


@pytest.mark.parametrize(("source", "target"),
                         [p for p in PAIRS if _expected_refusal(*p) is not None])
def test_advance_refusals_leave_state_unchanged(slot_at, source, target):
    s = slot_at(source)
    snapshot = copy.deepcopy(s)
    out, result = advance(s, target, tel(counterfactual_contribution=5.0))
    tag = _expected_refusal(source, target)
    assert out is s
    assert_unchanged(s, snapshot)
    assert not result.passed and result.score == 0.0
    assert result.checks_failed == (tag,) and result.checks_passed == ()
    assert result.target is target and result.gate is GATE_FOR_TARGET.get(target)
    assert result.message
    if tag == "out_of_order":
        assert source.name in result.message and target.name in result.message
    assert out.gate_evaluations == s.gate_evaluations


def test_out_of_order_message_lists_allowed_targets(slot_at):
    _, result = advance(slot_at(S.TRAINING), S.HOLDING, tel())
    assert "BLENDING" in result.message and "PRUNED" in result.message
    _, result = advance(slot_at(S.FOSSILIZED), S.PRUNED, tel())
    assert result.checks_failed == ("out_of_order",) and "nothing" in result.message


def test_advance_accepts_names_and_aliases(slot_at):
    s, result = advance(slot_at(S.HOLDING), "culled", tel())
    assert result.checks_failed == ("use_prune",) and s.stage is S.HOLDING
    s, result = advance(slot_at(S.BLENDING), "probationary", tel())
    assert result.gate is GateLevel.G3 and result.target is S.HOLDING
    s, result = advance(slot_at(S.GERMINATED), "training", tel())
    assert result.passed and s.stage is S.TRAINING


@pytest.mark.parametrize("target", ["bogus", 42, None, 4.0, True])
def test_advance_unknown_target_is_value_error(slot_at, target):
    with pytest.raises(ValueError):
        advance(slot_at(S.TRAINING), target, tel())


def test_advance_type_errors(slot_at):
    with pytest.raises(TypeError):
        advance(slot_at(S.TRAINING), S.BLENDING, 60.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        advance(object(), S.BLENDING, tel())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- advance gates


def test_advance_g1(slot_at):
    s, result = advance(slot_at(S.GERMINATED), S.TRAINING, tel(33.0))
    assert result.passed and result.gate is GateLevel.G1
    assert s.stage is S.TRAINING and s.history[-1].reason == "g1"
    assert s.last_gate == result
    assert s.metrics.accuracy_at_stage_start == 33.0
    assert s.metrics.epochs_total == 0  # advance does not count epochs
    assert_coefficients(s)


def test_advance_g2_fails_then_passes(slot_at):
    t = slot_at(S.TRAINING, task=TaskConfig(max_epochs=25))  # dwell 5
    base = t.metrics.current_accuracy
    s, result = advance(t, S.BLENDING, tel(base + 10))
    assert not result.passed and result.checks_failed == ("dwell_short",)
    assert s.stage is S.TRAINING
    assert s.last_gate == result and s.gate_evaluations == t.gate_evaluations + 1
    assert s.metrics.current_accuracy == base + 10  # the reading was taken
    assert s.metrics.epochs_in_stage == t.metrics.epochs_in_stage  # but no epoch counted
    for _ in range(5):
        s = step(s, tel(base, seed_gradient_norm_ratio=0.0))  # G2 fails in step (gradient)
    assert s.stage is S.TRAINING
    s, result = advance(s, S.BLENDING, tel(base + 1))
    assert result.passed and s.stage is S.BLENDING and s.history[-1].reason == "g2"
    assert s.metrics.accuracy_at_blending_start == base + 1
    assert_coefficients(s)


def test_advance_g3(slot_at):
    b = slot_at(S.BLENDING)
    s, result = advance(b, S.HOLDING, tel())
    assert not result.passed
    assert set(result.checks_failed) == {"alpha_low", "blend_epochs_short"}
    assert s.stage is S.BLENDING and s.last_gate == result
    s = set_alpha(s, 1.0)
    s, result = advance(s, S.HOLDING, tel())
    assert result.checks_failed == ("blend_epochs_short",)
    s = s.replace(metrics=s.metrics.replace(epochs_in_stage=3))
    s, result = advance(s, S.HOLDING, tel())
    assert result.passed and s.stage is S.HOLDING and s.history[-1].reason == "g3"
    assert float(s.alpha) == 1.0
    assert_coefficients(s)


def test_holding_never_returns_to_blending(slot_at):
    """No gate guards HOLDING -> BLENDING and neither specification has it: refused."""
    assert not is_valid_transition(S.HOLDING, S.BLENDING)
    h = slot_at(S.HOLDING)
    snapshot = copy.deepcopy(h)
    s, result = advance(h, S.BLENDING, tel(counterfactual_contribution=5.0))
    assert s is h and not result.passed
    assert result.checks_failed == ("out_of_order",) and result.target is S.BLENDING
    assert "FOSSILIZED" in result.message and "PRUNED" in result.message
    assert_unchanged(h, snapshot)
    with pytest.raises(InvalidTransitionError):
        transition(h, S.BLENDING)


def validated(slot_at, contribution: float = 2.0, **kw) -> SlotState:
    """A HOLDING seed with ``contribution`` recorded at alpha 1.0 (G5 can judge it)."""
    s = slot_at(S.HOLDING, **kw)  # the sigmoid ramp reaches HOLDING at alpha 0.976
    s = step(s, tel(counterfactual_contribution=contribution))  # the ramp reaches 1.0
    s = step(s, tel(counterfactual_contribution=contribution))  # measured at alpha 1.0
    assert s.stage is S.HOLDING and s.metrics.holding_contribution == contribution
    return s


def test_advance_to_fossilized_is_fossilize(slot_at):
    h = validated(slot_at)
    a_state, a_result = advance(h, S.FOSSILIZED, tel(counterfactual_contribution=2.0))
    f_state, f_result = fossilize(h, tel(counterfactual_contribution=2.0))
    assert a_state == f_state and a_result == f_result and a_result.passed


# --------------------------------------------------------------------------- fossilize


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
def test_fossilize_success(slot_at, alpha_mode):
    h = validated(slot_at, 1.0, alpha_mode=alpha_mode)
    s, result = fossilize(h, tel(counterfactual_contribution=1.0))
    assert result.passed and result.gate is GateLevel.G5
    assert set(result.checks_passed) == {"in_holding", "holding_epochs_met", "alpha_full",
                                         "counterfactual_present", "contribution_met",
                                         "telemetry_finite"}
    assert s.stage is S.FOSSILIZED and s.history[-1].reason == "fossilize"
    assert s.history[-1].epochs_in_stage == 2
    assert bool((s.alpha == 1.0).all()) and s.alpha.shape == h.alpha.shape
    assert (float(s.b), float(s.g)) == (0.0, 0.0)
    assert s.metrics.counterfactual_contribution == 1.0
    assert s.metrics.holding_contribution is None  # cleared as FOSSILIZED begins
    assert s.last_gate == result and s.prune_reason is None
    assert s.seed_id == h.seed_id and s.blueprint_id == h.blueprint_id


@pytest.mark.parametrize(("recorded", "telemetry", "tags"), [
    (None, tel(counterfactual_contribution=50.0), {"holding_epochs_short", "alpha_not_full",
                                                   "counterfactual_missing", "contribution_low"}),
    (0.5, tel(counterfactual_contribution=50.0), {"contribution_low"}),
    (0.0, tel(counterfactual_contribution=50.0), {"contribution_low"}),
    (2.0, tel(), set()),
    (2.0, tel(counterfactual_contribution=math.nan), {"telemetry_non_finite"}),
    (2.0, tel(counterfactual_contribution=5.0, finite=False), {"telemetry_non_finite"}),
])
def test_fossilize_judges_the_holding_record_not_the_request(slot_at, recorded, telemetry, tags):
    """G5 reads what step recorded in HOLDING; the request's reading only has to be finite."""
    h = slot_at(S.HOLDING) if recorded is None else validated(slot_at, recorded)
    s, result = fossilize(h, telemetry)
    assert set(result.checks_failed) == tags and result.passed is (not tags)
    assert s.stage is (S.HOLDING if tags else S.FOSSILIZED)


@pytest.mark.parametrize(("telemetry", "tag"), [
    (tel(), "counterfactual_missing"),
    (tel(counterfactual_contribution=0.5), "holding_epochs_short"),
    (tel(counterfactual_contribution=math.nan), "telemetry_non_finite"),
    (tel(counterfactual_contribution=5.0, finite=False), "telemetry_non_finite"),
])
def test_fossilize_failure_keeps_holding(slot_at, telemetry, tag):
    h = slot_at(S.HOLDING)
    s, result = fossilize(h, telemetry)
    assert not result.passed and tag in result.checks_failed
    assert s.stage is S.HOLDING and s.history == h.history
    assert torch.equal(s.alpha, h.alpha)
    assert s.last_gate == result and s.gate_evaluations == h.gate_evaluations + 1


@pytest.mark.parametrize("stage", [s for s in S if s is not S.HOLDING])
def test_fossilize_refused_outside_holding(slot_at, stage):
    s = slot_at(stage)
    snapshot = copy.deepcopy(s)
    out, result = fossilize(s, tel(counterfactual_contribution=10.0))
    assert out is s
    assert_unchanged(s, snapshot)
    assert not result.passed and result.checks_failed == ("not_in_holding",)
    assert result.target is S.FOSSILIZED


def test_fossilize_type_errors(slot_at):
    with pytest.raises(TypeError):
        fossilize(slot_at(S.HOLDING), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fossilize("x", tel())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- prune


@pytest.mark.parametrize("stage", LIVE)
def test_prune_live_seed(slot_at, stage):
    s = slot_at(stage)
    p = prune(s, "tamiyo said so")
    assert p.stage is S.PRUNED and p.prune_reason == "tamiyo said so"
    assert p.history[-1].reason == "tamiyo said so" and p.history[-1].from_stage is stage
    assert p.seed_id == s.seed_id and p.blueprint_id == s.blueprint_id
    assert_coefficients(p)
    assert p.alpha.shape == s.alpha.shape


def test_prune_fossil_is_value_error(slot_at):
    f = slot_at(S.FOSSILIZED)
    with pytest.raises(ValueError, match="FOSSILIZED"):
        prune(f, "please")


@pytest.mark.parametrize("stage", [s for s in NOT_LIVE if s is not S.FOSSILIZED])
def test_prune_without_live_seed_is_value_error(slot_at, stage):
    with pytest.raises(ValueError, match="no live seed"):
        prune(slot_at(stage), "please")


@pytest.mark.parametrize("reason", ["", None, 3, b"x"])
def test_prune_needs_a_reason(slot_at, reason):
    with pytest.raises(ValueError, match="reason"):
        prune(slot_at(S.TRAINING), reason)


def test_prune_type_error_for_non_state():
    with pytest.raises(TypeError):
        prune(None, "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- transition


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_transition_matrix(slot_at, source, target):
    s = slot_at(source)
    if (source, target) == (S.DORMANT, S.GERMINATED):
        with pytest.raises(ValueError, match="germinate"):
            transition(s, target)
        return
    if target not in VALID_TRANSITIONS[source]:
        with pytest.raises(ValueError, match="invalid transition"):
            transition(s, target)
        return
    t = transition(s, target)
    assert t.stage is target
    assert t.history[-1].from_stage is source and t.history[-1].to_stage is target
    assert t.history[-1].reason == "transition"
    assert t.transitions == s.transitions + 1
    assert t.gate_evaluations == s.gate_evaluations  # gate-free
    assert_coefficients(t)
    if target in (S.BLENDING, S.HOLDING):
        assert torch.equal(t.alpha, s.alpha)
    if target is S.PRUNED:
        assert t.prune_reason == "transition"
    if target is S.DORMANT:
        assert t.seed_id is None and t.blueprint_id is None and t.last_gate is None


def test_transition_accepts_names(slot_at):
    assert transition(slot_at(S.HOLDING), "Fossilized").stage is S.FOSSILIZED
    assert transition(slot_at(S.HOLDING), "culled").stage is S.PRUNED
    with pytest.raises(ValueError):
        transition(slot_at(S.HOLDING), "nowhere")


def test_transition_type_error_for_non_state():
    with pytest.raises(TypeError):
        transition(1, S.DORMANT)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- set_alpha


@pytest.mark.parametrize("stage", [S.BLENDING, S.HOLDING])
@pytest.mark.parametrize("value", [0, 1, 0.0, 0.25, 1.0, torch.tensor(0.5),
                                   torch.tensor(0.5, dtype=torch.float64),
                                   torch.tensor(0.5, dtype=torch.float16)])
def test_set_alpha_scalar(slot_at, stage, value):
    s = set_alpha(slot_at(stage), value)
    assert s.stage is stage
    assert s.alpha.dtype == torch.float32 and s.alpha.shape == ()
    assert float(s.alpha) == pytest.approx(float(value))


def test_set_alpha_copies_and_detaches_its_input(slot_at):
    value = torch.tensor(0.3, requires_grad=True)
    s = set_alpha(slot_at(S.BLENDING), value)
    assert not s.alpha.requires_grad
    with torch.no_grad():
        value.fill_(0.9)
    assert float(s.alpha) == pytest.approx(0.3)
    vec = torch.full((4,), 0.4)
    c = set_alpha(slot_at(S.BLENDING, alpha_mode="channel"), vec)
    vec.fill_(1.0)
    assert torch.equal(c.alpha, torch.full((4,), 0.4))


def test_set_alpha_channel(slot_at):
    b = slot_at(S.BLENDING, alpha_mode="channel")
    v = torch.tensor([0.0, 0.25, 0.5, 1.0])
    s = set_alpha(b, v)
    assert torch.equal(s.alpha, v) and s.alpha.dtype == torch.float32


@pytest.mark.parametrize("stage", [s for s in S if s not in (S.BLENDING, S.HOLDING)])
def test_set_alpha_wrong_stage(slot_at, stage):
    with pytest.raises(ValueError, match="BLENDING or HOLDING"):
        set_alpha(slot_at(stage), 0.5)


@pytest.mark.parametrize("value", [
    torch.tensor([0.5]), torch.zeros(4), torch.zeros(1, 1), torch.tensor(1),
    torch.tensor(True), torch.tensor(0.5 + 0j),
])
def test_set_alpha_scalar_mode_rejects_wrong_tensor(slot_at, value):
    with pytest.raises(ValueError, match="scalar alpha must be a float tensor"):
        set_alpha(slot_at(S.BLENDING), value)


@pytest.mark.parametrize("value", [
    torch.tensor(0.5), torch.zeros(3), torch.zeros(5), torch.zeros(4, 1), torch.zeros(1, 4),
    torch.zeros(4, dtype=torch.int64),
])
def test_set_alpha_channel_mode_rejects_wrong_tensor(slot_at, value):
    with pytest.raises(ValueError, match="channel alpha must be a float tensor"):
        set_alpha(slot_at(S.BLENDING, alpha_mode="channel"), value)


@pytest.mark.parametrize("value", [0.5, 1, 0.0])
def test_set_alpha_channel_mode_rejects_numbers(slot_at, value):
    with pytest.raises(ValueError, match="per channel"):
        set_alpha(slot_at(S.HOLDING, alpha_mode="channel"), value)


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, -0.01, 1.01, 2, -1, torch.tensor(math.nan), torch.tensor(1.5),
    torch.tensor(1e300, dtype=torch.float64), 3e38,
    1e39, -1e300, pytest.param(10**400, id="10**400"),
])
def test_set_alpha_out_of_range(slot_at, value):
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]"):
        set_alpha(slot_at(S.BLENDING), value)


def test_set_alpha_channel_out_of_range(slot_at):
    b = slot_at(S.BLENDING, alpha_mode="channel")
    for bad in ([0.5, math.nan, 0.5, 0.5], [0.5, 0.5, 1.5, 0.5], [-0.1, 0.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="finite"):
            set_alpha(b, torch.tensor(bad))


@pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5], (0.5,)])
def test_set_alpha_bad_type(slot_at, value):
    with pytest.raises(TypeError, match="number or a tensor"):
        set_alpha(slot_at(S.BLENDING), value)


def test_set_alpha_keeps_everything_else(slot_at):
    b = slot_at(S.BLENDING)
    s = set_alpha(b, 0.6)
    assert s.replace(alpha=b.alpha) == b
    assert s.history == b.history and s.transitions == b.transitions
