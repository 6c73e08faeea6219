"""Purity: no public lifecycle function changes the state it is given, in any stage.

Each call is checked three ways: the input equals a ``copy.deepcopy`` taken
before the call (static fields and tensors), each input tensor still equals a
clone taken before the call, and no input tensor's version counter moved (an
in-place write, even one that restores the value, bumps it).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from esper.kasmina import (
    advance,
    alpha_at,
    events,
    fossilize,
    germinate,
    prune,
    set_alpha,
    step,
    transition,
)
from esper.leyline import SeedStage, SlotTelemetry

S = SeedStage
DOCUMENTED = (RuntimeError, ValueError, TypeError)

TELEMETRY = [
    SlotTelemetry(60.0, counterfactual_contribution=2.0, seed_gradient_norm_ratio=0.5),
    SlotTelemetry(60.0, counterfactual_contribution=-2.0, seed_gradient_norm_ratio=0.0,
                  isolation_violations=50),
    SlotTelemetry(math.nan, counterfactual_contribution=math.inf, finite=False),
]


def _calls():
    calls = [
        ("germinate", lambda s: germinate(s, "norm", "seed-x")),
        ("prune", lambda s: prune(s, "why")),
        ("set_alpha", lambda s: set_alpha(s, 0.5 if s.alpha_mode == "scalar"
                                          else torch.full((s.channels,), 0.5))),
        ("set_alpha_tensor", lambda s: set_alpha(s, s.alpha)),  # its own tensor back
        ("to", lambda s: s.to("cpu")),
        ("replace", lambda s: s.replace(epoch=s.epoch + 1)),
    ]
    for i, t in enumerate(TELEMETRY):
        calls.append((f"step{i}", lambda s, t=t: step(s, t)))
        calls.append((f"fossilize{i}", lambda s, t=t: fossilize(s, t)))
        for target in S:
            calls.append((f"advance{i}-{target.name}", lambda s, t=t, g=target: advance(s, g, t)))
    for target in S:
        calls.append((f"transition-{target.name}", lambda s, g=target: transition(s, g)))
    return calls


CALLS = _calls()


def _snapshot(s):
    tensors = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)
               if isinstance(getattr(s, f.name), torch.Tensor)}
    return (copy.deepcopy(s), {k: v.clone() for k, v in tensors.items()},
            {k: v._version for k, v in tensors.items()}, tensors)


def _assert_untouched(s, snap):
    deep, clones, versions, tensors = snap
    assert s == deep
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if isinstance(value, torch.Tensor):
            assert value is tensors[f.name]
            assert torch.equal(value, clones[f.name]), f.name
            assert value._version == versions[f.name], f"{f.name} written in place"
        else:
            assert value == getattr(deep, f.name), f.name


@pytest.mark.parametrize("alpha_mode", ["scalar", "channel"])
@pytest.mark.parametrize("stage", list(S))
def test_every_public_function_leaves_its_input_alone(slot_at, stage, alpha_mode):
    state = slot_at(stage, alpha_mode=alpha_mode)
    if stage in (S.BLENDING, S.HOLDING):  # a non-trivial alpha to protect
        state = set_alpha(state, 0.3 if alpha_mode == "scalar" else torch.linspace(0.1, 0.9, 4))
    for name, call in CALLS:
        snap = _snapshot(state)
        try:
            result = call(state)
        except DOCUMENTED:
            result = None
        _assert_untouched(state, snap)
        out = result[0] if isinstance(result, tuple) else result
        if out is not None and out is not state:  # events() is pure too
            out_snap = _snapshot(out)
            assert isinstance(events(state, out), tuple), name
            _assert_untouched(state, snap)
            _assert_untouched(out, out_snap)


def test_set_alpha_does_not_alias_the_callers_tensor(slot_at):
    s = slot_at(S.BLENDING, alpha_mode="channel")
    value = torch.full((4,), 0.25)
    version = value._version
    out = set_alpha(s, value)
    assert value._version == version
    assert out.alpha.data_ptr() != value.data_ptr()


def test_step_ramp_does_not_write_into_the_input_alpha(slot_at):
    for algo in ("linear", "sigmoid", "gated"):
        s = slot_at(S.BLENDING, algo=algo)
        alpha, clone, version = s.alpha, s.alpha.clone(), s.alpha._version
        t = step(s, TELEMETRY[0])
        assert torch.equal(alpha, clone) and alpha._version == version
        assert float(t.alpha) > 0.0 and float(s.alpha) == 0.0


def test_outputs_are_independent_of_each_other(slot_at):
    h = slot_at(S.HOLDING)
    a = step(h, TELEMETRY[0])  # the ramp finishes in a new tensor
    assert a.stage is S.HOLDING and float(a.alpha) == 1.0 and float(h.alpha) < 1.0
    v = step(a, TELEMETRY[0])  # an epoch at alpha 1: validated for G5
    b, _ = fossilize(v, TELEMETRY[0])
    c = step(v, TELEMETRY[0])
    assert b.stage is S.FOSSILIZED and c.stage is S.HOLDING and v.stage is S.HOLDING
    assert float(b.alpha) == 1.0 and b.alpha is not v.alpha
    assert v.metrics.holding_contribution == 2.0 and b.metrics.holding_contribution is None


def test_alpha_at_is_a_pure_function():
    assert [alpha_at("sigmoid", k, 5) for k in range(6)] == [alpha_at("sigmoid", k, 5)
                                                             for k in range(6)]
