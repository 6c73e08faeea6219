"""Blend algorithms: the registry and the learned GatedBlend."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.state import SlotState
from esper.leyline import SeedStage
from esper.leyline.constants import BLEND_ALGORITHMS
from esper.nn.blending import BLEND_FACTORIES, GatedBlend, create_blend
from esper.ops.formula import blend_weight, slot_forward, slot_forward_reference

C = 8
SHAPES = {"cnn": (4, C, 5, 5), "transformer": (4, 6, C)}


def blending_state(a: float, g: float) -> SlotState:
    state = SlotState.dormant("mid", channels=C)
    return state.replace(stage=SeedStage.BLENDING, blueprint_id="t", seed_id="s", isolate=g == 1.0,
                         alpha=torch.tensor(a), b=torch.tensor(0.0), g=torch.tensor(g))


def trained_gate(topology: str) -> GatedBlend:
    """A gate whose output is far from neutral, so the tests see a real factor."""
    torch.manual_seed(3)
    gate = GatedBlend(C, topology)
    nn.init.normal_(gate.fc2.weight, std=2.0)
    return gate


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_endpoints_exact_and_bounds(topology: str) -> None:
    gate, x = trained_gate(topology), torch.randn(SHAPES[topology]) * 3
    assert torch.equal(gate(x, torch.tensor(0.0)), torch.zeros_like(gate(x, torch.tensor(0.0))))
    assert torch.equal(gate(x, torch.tensor(1.0)), torch.ones_like(gate(x, torch.tensor(1.0))))
    for a in (0.1, 0.5, 0.9):
        a_eff = gate(x, torch.tensor(a))
        assert a_eff.min() >= a * a - 1e-6 and a_eff.max() <= a * (2 - a) + 1e-6
        assert a_eff.std() > 0  # the factor varies across samples


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_gate_starts_neutral_and_has_per_sample_shape(topology: str) -> None:
    gate, x = GatedBlend(C, topology), torch.randn(SHAPES[topology])
    a_eff = gate(x, torch.tensor(0.3))
    expected_shape = (4, 1, 1, 1) if topology == "cnn" else (4, 6, 1)
    assert a_eff.shape == expected_shape
    torch.testing.assert_close(a_eff, torch.full(expected_shape, 0.3))
    per_channel = gate(x, blend_weight(torch.full((C,), 0.3), x))
    assert per_channel.shape == ((4, C, 1, 1) if topology == "cnn" else (4, 6, C))


def test_transformer_gate_is_causal() -> None:
    gate, x = trained_gate("transformer"), torch.randn(SHAPES["transformer"])
    changed = x.clone()
    changed[:, 4:] += 10.0
    a, a_changed = gate(x, torch.tensor(0.5)), gate(changed, torch.tensor(0.5))
    assert torch.equal(a[:, :4], a_changed[:, :4])
    assert not torch.equal(a[:, 4:], a_changed[:, 4:])


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
@pytest.mark.parametrize("g", [1.0, 0.0])
def test_gradients_reach_gate_and_match_reference(topology: str, g: float) -> None:
    state, gate = blending_state(0.3, g), trained_gate(topology)
    seed = nn.Conv2d(C, C, 1) if topology == "cnn" else nn.Linear(C, C)
    x0, ct = torch.randn(SHAPES[topology]), torch.randn(SHAPES[topology])
    results = []
    for forward in (slot_forward, slot_forward_reference):
        host = x0.clone().requires_grad_()
        out = forward(state, seed, host, gate=gate)
        params = [host, *gate.parameters(), *seed.parameters()]
        results.append((out, torch.autograd.grad(out, params, ct)))
    (fast_out, fast_grads), (ref_out, ref_grads) = results
    torch.testing.assert_close(fast_out, ref_out)
    for got, want in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(grad.abs().sum() > 0 for grad in fast_grads[1:3])  # fc1 weight and bias
    if g == 1.0:  # the gate reads the isolated input: no leak into the host
        a_eff = gate(x0, blend_weight(state.alpha, x0))
        assert torch.equal(fast_grads[0], (1 - a_eff) * ct)


def test_gated_slot_compiles_to_one_graph() -> None:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    gate, seed = trained_gate("cnn"), nn.Conv2d(C, C, 1)
    forward = torch.compile(slot_forward, backend=counter, fullgraph=True)
    host = torch.randn(SHAPES["cnn"]).to(memory_format=torch.channels_last)
    for a in (0.0, 0.4, 1.0):
        out = forward(blending_state(a, 1.0), seed, host.requires_grad_(), gate=gate)
        out.sum().backward()
        eager = slot_forward(blending_state(a, 1.0), seed, host, gate=gate)
        torch.testing.assert_close(out, eager)
    assert counter.frame_count == 1
    assert all(p.grad is not None for p in gate.parameters())


def test_gate_parameters_are_in_state_dict() -> None:
    gate = GatedBlend(C, "cnn", hidden=5)
    assert set(gate.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert gate.fc1.out_features == 5


def test_create_blend_registry() -> None:
    assert tuple(BLEND_FACTORIES) == tuple(BLEND_ALGORITHMS)
    assert create_blend("linear", C, "cnn") is None
    assert create_blend("sigmoid", C, "transformer") is None
    assert isinstance(create_blend("gated", C, "transformer"), GatedBlend)
    with pytest.raises(ValueError, match="known: linear, sigmoid, gated"):
        create_blend("cosine", C, "cnn")
    with pytest.raises(ValueError, match="topology"):
        create_blend("gated", C, "rnn")  # type: ignore[arg-type]
