"""Property tests: random action sequences against the lifecycle's invariants.

Each example builds a slot (random task timing, gates, topology, alpha mode),
then applies a random list of actions: germinate, step (with NaN, inf,
negative, huge and missing readings, random isolation counts), advance to any
stage, fossilize, prune (any reason), transition to any stage and set_alpha
(any value, of any type). After each action:

* the only exceptions are the documented ones, exactly when documented;
* a failed call leaves the state untouched;
* every new history record is in VALID_TRANSITIONS and the records chain;
* a fossil stays a fossil;
* a seed fossilizes through G5 only after ``min_holding_epochs`` epochs in
  HOLDING, at alpha 1.0, on a counterfactual step recorded there at alpha 1.0
  that reaches the threshold; a recorded HOLDING contribution exists only in
  HOLDING, and HOLDING never returns to BLENDING;
* alpha stays finite in [0, 1], the coefficients match the stage;
* the history never exceeds 100 records;
* events(before, after) works and each payload has exactly its fields.
"""

from __future__ import annotations

import copy
import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from esper.core.state import stage_coefficients
from esper.errors import (
    AlphaShapeError,
    AlphaValueError,
    FossilizedSeedError,
    InvalidTransitionError,
    NoLiveSeedError,
    SlotOccupiedError,
    StageError,
)
from esper.kasmina import (
    SlotState,
    advance,
    events,
    fossilize,
    germinate,
    prune,
    set_alpha,
    step,
    transition,
)
from esper.leyline import (
    EVENT_PAYLOAD_FIELDS,
    VALID_TRANSITIONS,
    GateResult,
    QualityGates,
    SeedStage,
    SlotTelemetry,
    TaskConfig,
)
from esper.leyline.constants import BLEND_ALGORITHMS, DEFAULT_MAX_HISTORY

S = SeedStage
LIVE = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING})
CHANNELS = 3

# --------------------------------------------------------------------------- strategies

_special = st.sampled_from([math.nan, math.inf, -math.inf, -1e308, 1e308, -0.0, 5e-324, -1.0])
_finite = st.one_of(st.floats(-200.0, 200.0), st.integers(-1000, 1000),
                    st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False))
numbers = st.one_of(_finite, _finite, _finite, _special)
optional_numbers = st.one_of(st.none(), numbers)

telemetry = st.builds(
    SlotTelemetry,
    accuracy=numbers,
    counterfactual_contribution=optional_numbers,
    seed_gradient_norm_ratio=optional_numbers,
    probe_loss_reduction=optional_numbers,
    isolation_violations=st.one_of(st.just(0), st.integers(0, 15)),
    finite=st.integers(0, 9).map(bool),  # mostly True
)
# Readings that let a seed make progress, so the long paths are explored too.
good_telemetry = st.builds(
    lambda acc, cf: SlotTelemetry(acc, counterfactual_contribution=cf,
                                  seed_gradient_norm_ratio=1.0, probe_loss_reduction=0.01),
    st.floats(0.0, 100.0), st.one_of(st.none(), st.floats(0.0, 5.0)))

targets = st.one_of(st.sampled_from(list(S)),
                    st.sampled_from(["culled", "probationary", "training", "Fossilized"]))

# Beyond float32 range set_alpha raises the wrong error (a known bug, see
# test_lifecycle_requests.py::test_set_alpha_out_of_range); stay inside it here.
_alpha_numbers = st.one_of(
    st.floats(-2.0, 2.0), st.floats(-1e30, 1e30), st.integers(-3, 3),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 0.95]))
alpha_values = st.one_of(
    _alpha_numbers, _alpha_numbers,
    _alpha_numbers.map(lambda v: torch.tensor(float(v))),
    st.lists(_alpha_numbers, min_size=CHANNELS, max_size=CHANNELS).map(torch.tensor),
    st.lists(st.floats(0.0, 1.0), min_size=CHANNELS, max_size=CHANNELS).map(torch.tensor),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5).map(torch.tensor),
    st.sampled_from([True, False, None, "0.5", [0.5], torch.tensor(1), torch.tensor([True])]),
)

_germinate_ok = st.tuples(st.just("germinate"), st.just("norm"),
                          st.sampled_from(["seed-a", "seed-b"]), st.sampled_from(BLEND_ALGORITHMS),
                          st.just(7))
_germinate_any = st.tuples(st.just("germinate"), st.sampled_from(["norm", "", None]),
                           st.sampled_from(["seed-a", "", None]),
                           st.sampled_from([*BLEND_ALGORITHMS, "cosine"]),
                           st.sampled_from([0, 7, -1, 1.5]))
_step_any = st.tuples(st.just("step"), telemetry)
_step_good = st.tuples(st.just("step"), good_telemetry)
# Branches are drawn about equally often: repeats weight the ones that make progress.
actions = st.one_of(
    _germinate_ok, _germinate_any, _step_any, _step_any, _step_good, _step_good, _step_good,
    _step_good, _step_good,
    st.tuples(st.just("advance"), targets, st.one_of(telemetry, good_telemetry)),
    st.tuples(st.just("advance"), targets, good_telemetry),
    st.tuples(st.just("fossilize"), st.one_of(telemetry, good_telemetry)),
    st.tuples(st.just("prune"), st.sampled_from(["manual", "non_finite", "", None, 3])),
    st.tuples(st.just("transition"), targets),
    st.tuples(st.just("set_alpha"), alpha_values),
)


@st.composite
def initial_states(draw, starts: tuple[SeedStage, ...] | None = None) -> SlotState:
    task = TaskConfig(
        topology=draw(st.sampled_from(["cnn", "transformer"])),
        max_epochs=draw(st.integers(1, 12)),
        train_to_blend_fraction=draw(st.sampled_from([0.0, 0.2, 0.5, 1.0])),
        blending_steps=draw(st.integers(1, 5)),
        embargo_epochs=draw(st.integers(0, 3)),
    )
    gates = QualityGates(
        min_probe_loss_reduction=draw(st.sampled_from([-1.0, 0.0, 0.5])),
        min_blending_epochs=draw(st.integers(0, 3)),
        min_seed_gradient_ratio=draw(st.sampled_from([0.0, 0.05])),
        alpha_complete_threshold=draw(st.sampled_from([0.5, 0.95, 1.0])),
        min_fossilize_contribution=draw(st.sampled_from([0.0, 1.0])),
        max_isolation_violations=draw(st.sampled_from([0, 10, 1000])),
        min_holding_epochs=draw(st.sampled_from([1, 1, 2])),
    )
    state = SlotState.dormant("mid", channels=CHANNELS, task=task, gates=gates,
                              alpha_mode=draw(st.sampled_from(["scalar", "channel"])))
    start = draw(st.sampled_from(starts or _STARTS))
    if start == S.UNKNOWN:
        return state.replace(stage=S.UNKNOWN)
    if start == S.DORMANT:
        return state
    state = germinate(state, "norm", "seed-0", blend_algorithm_id=draw(
        st.sampled_from(BLEND_ALGORITHMS)))
    for target in _PATHS[start]:  # the gate-free tool moves it the rest of the way
        state = transition(state, target)
    return state


_STARTS = (S.HOLDING, S.BLENDING, S.FOSSILIZED, S.TRAINING, S.GERMINATED, S.PRUNED,
           S.EMBARGOED, S.RESETTING, S.DORMANT, S.UNKNOWN)
_PATHS = {
    S.GERMINATED: (),
    S.TRAINING: (S.TRAINING,),
    S.BLENDING: (S.TRAINING, S.BLENDING),
    S.HOLDING: (S.TRAINING, S.BLENDING, S.HOLDING),
    S.FOSSILIZED: (S.TRAINING, S.BLENDING, S.HOLDING, S.FOSSILIZED),
    S.PRUNED: (S.PRUNED,),
    S.EMBARGOED: (S.PRUNED, S.EMBARGOED),
    S.RESETTING: (S.PRUNED, S.EMBARGOED, S.RESETTING),
}


# --------------------------------------------------------------------------- model of errors


def _expected_error(state: SlotState, action: tuple) -> type[Exception] | None:
    kind = action[0]
    if kind == "germinate":
        _, bp, sid, algo, params = action
        if state.stage != S.DORMANT:
            return SlotOccupiedError
        bad = (not bp or not sid or algo not in BLEND_ALGORITHMS
               or not isinstance(params, int) or params < 0)
        return ValueError if bad else None
    if kind == "prune":
        reason = action[1]
        if not isinstance(reason, str) or not reason:
            return ValueError
        if state.stage == S.FOSSILIZED:
            return FossilizedSeedError
        return None if state.stage in LIVE else NoLiveSeedError
    if kind == "transition":
        target = S.parse(action[1])
        if state.stage == S.DORMANT and target == S.GERMINATED:
            return InvalidTransitionError
        return None if target in VALID_TRANSITIONS[state.stage] else InvalidTransitionError
    if kind == "set_alpha":
        value = action[1]
        if state.stage not in (S.BLENDING, S.HOLDING):
            return StageError
        if isinstance(value, bool) or not isinstance(value, int | float | torch.Tensor):
            return TypeError
        if isinstance(value, torch.Tensor):
            shape = () if state.alpha_mode == "scalar" else (state.channels,)
            if tuple(value.shape) != shape or not value.is_floating_point():
                return AlphaShapeError
            ok = bool((torch.isfinite(value) & (value >= 0) & (value <= 1)).all())
        else:
            if state.alpha_mode == "channel":
                return AlphaShapeError
            ok = math.isfinite(value) and 0 <= value <= 1
        return None if ok else AlphaValueError
    return None  # step, advance and fossilize never raise on well-typed input


def _apply(state: SlotState, action: tuple) -> tuple[SlotState, GateResult | None]:
    kind = action[0]
    if kind == "germinate":
        _, bp, sid, algo, params = action
        return germinate(state, bp, sid, blend_algorithm_id=algo, seed_params=params), None
    if kind == "step":
        return step(state, action[1]), None
    if kind == "advance":
        return advance(state, action[1], action[2])
    if kind == "fossilize":
        return fossilize(state, action[1])
    if kind == "prune":
        return prune(state, action[1]), None
    if kind == "transition":
        return transition(state, action[1]), None
    if kind == "set_alpha":
        return set_alpha(state, action[1]), None
    raise AssertionError(kind)


# --------------------------------------------------------------------------- invariants


def _check_state(s: SlotState) -> None:
    assert isinstance(s, SlotState)
    assert bool((torch.isfinite(s.alpha) & (s.alpha >= 0) & (s.alpha <= 1)).all())
    assert s.alpha.dtype == torch.float32
    assert tuple(s.alpha.shape) == (() if s.alpha_mode == "scalar" else (CHANNELS,))
    a, b, g = stage_coefficients(s.stage, s.isolate)
    assert (float(s.b), float(s.g)) == (b, g)
    if a is not None:
        assert bool((s.alpha == a).all())
    assert len(s.history) <= DEFAULT_MAX_HISTORY
    assert s.transitions >= len(s.history)
    if s.stage == S.DORMANT:
        assert s.seed_id is None and s.blueprint_id is None
    if s.stage in LIVE or s.stage in (S.FOSSILIZED, S.PRUNED):
        assert s.seed_id and s.blueprint_id
    recorded = s.metrics.holding_contribution
    if recorded is not None:
        assert s.stage == S.HOLDING and math.isfinite(recorded)


def _check_step(before: SlotState, after: SlotState, result: GateResult | None) -> None:
    _check_state(after)
    new = after.transitions - before.transitions
    assert new >= 0
    assert after.epoch >= before.epoch
    assert after.gate_evaluations >= before.gate_evaluations
    if new == 0:
        assert after.stage == before.stage
    else:
        records = after.history[-new:]
        assert records[0].from_stage == before.stage
        assert records[-1].to_stage == after.stage
        for prev, rec in zip((None, *records[:-1]), records, strict=True):
            assert rec.to_stage in VALID_TRANSITIONS[rec.from_stage], rec
            if prev is not None:
                assert rec.from_stage == prev.to_stage
    if before.stage == S.FOSSILIZED:
        assert after.stage == S.FOSSILIZED
        assert bool((after.alpha == 1).all())
    assert not (before.stage == S.HOLDING and after.stage == S.BLENDING)
    if before.stage == S.HOLDING and after.stage == S.FOSSILIZED \
            and after.history[-1].reason == "fossilize":  # G5 (not the gate-free tool)
        m, gates = before.metrics, before.gates
        assert m.epochs_in_stage >= gates.min_holding_epochs >= 1
        assert bool((before.alpha == 1).all())
        assert m.holding_contribution is not None
        assert m.holding_contribution >= gates.min_fossilize_contribution
        event("fossilized through G5")
    if before.stage == S.HOLDING and after.stage == S.HOLDING:
        new = after.metrics.holding_contribution
        if new is not None and new != before.metrics.holding_contribution:
            assert bool((before.alpha == 1).all())  # recorded only at full alpha
    if result is not None:
        assert isinstance(result, GateResult)
        assert 0.0 <= result.score <= 1.0
        assert result.passed or result.checks_failed
        if not result.passed:
            assert after.stage == before.stage
    for e in events(before, after):
        assert set(e.payload) == set(EVENT_PAYLOAD_FIELDS[e.type])
        assert e.slot_id == after.slot_id


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial_states(), st.lists(actions, min_size=5, max_size=60))
def test_random_action_sequences_keep_every_invariant(state, plan):
    _check_state(state)
    visited = {state.stage}
    for action in plan:
        expected = _expected_error(state, action)
        snapshot = copy.deepcopy(state)
        alpha, version = state.alpha.clone(), state.alpha._version
        try:
            after, result = _apply(state, action)
        except (RuntimeError, ValueError, TypeError) as error:
            assert expected is not None and type(error) is expected, (action, error)
            after, result = state, None
        else:
            assert expected is None, (action, expected)
        # the input is never touched, whatever happened
        assert state == snapshot
        assert torch.equal(state.alpha, alpha) and state.alpha._version == version
        _check_step(state, after, result)
        state = after
        visited.add(state.stage)
    for stage in visited:
        event(f"visited {stage.name}")


_holding_actions = st.one_of(
    _step_good, _step_good, _step_good, _step_good,
    st.tuples(st.just("fossilize"), good_telemetry),
    st.tuples(st.just("fossilize"), st.one_of(telemetry, good_telemetry)),
    st.tuples(st.just("set_alpha"), st.sampled_from([0.5, 0.99, 1.0, 1.0, 1.0, 1.0])),
)


@settings(max_examples=100, deadline=None)
@given(initial_states(starts=(S.BLENDING, S.HOLDING)),
       st.lists(_holding_actions, min_size=10, max_size=30))
def test_fossilization_always_follows_holding_validation(state, plan):
    """Seeds in BLENDING or HOLDING, driven toward G5: _check_step holds G5 to its rule."""
    for action in plan:
        if action[0] == "set_alpha":
            if state.stage not in (S.BLENDING, S.HOLDING):
                continue
            value = action[1]
            action = ("set_alpha", value if state.alpha_mode == "scalar"
                      else torch.full((CHANNELS,), value))
        after, result = _apply(state, action)
        _check_step(state, after, result)
        state = after
    event(f"ended {state.stage.name}")


@settings(max_examples=100, deadline=None)
@given(initial_states(), st.lists(st.one_of(telemetry, good_telemetry), max_size=60))
def test_step_alone_never_raises_and_fossils_are_forever(state, readings):
    for reading in readings:
        after = step(state, reading)
        _check_step(state, after, None)
        state = after


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3), st.integers(21, 40))
def test_many_cycles_keep_the_history_bounded(embargo, cycles):
    state = SlotState.dormant("mid", channels=CHANNELS, task=TaskConfig(embargo_epochs=embargo))
    reading = SlotTelemetry(50.0)
    for i in range(cycles):
        before = state
        state = prune(germinate(state, "norm", f"s{i}"), "cycle")
        while state.stage != S.DORMANT:
            state = step(state, reading)
        _check_step(before, state, None)
    assert len(state.history) == DEFAULT_MAX_HISTORY
    assert state.transitions == cycles * 5 > DEFAULT_MAX_HISTORY
