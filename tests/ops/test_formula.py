"""Slot ops: exact gradients in every stage, eager and compiled, one graph, layouts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.state import SlotState
from esper.leyline import SeedStage
from esper.ops.formula import (
    blend,
    blend_weight,
    broadcast_alpha,
    check_channel_alpha,
    isolate,
    slot_forward,
    slot_forward_reference,
    ste,
)

C = 4
CL = torch.channels_last
# (stage, a, b, g, isolate) for every stage that runs a seed.
COEFFICIENTS = [
    (SeedStage.TRAINING, 0.0, 1.0, 1.0, True),
    (SeedStage.BLENDING, 0.3, 0.0, 1.0, True),
    (SeedStage.BLENDING, 0.3, 0.0, 0.0, False),
    (SeedStage.FOSSILIZED, 1.0, 0.0, 0.0, True),
]
BACKENDS = ["eager", "aot_eager"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_state(stage: SeedStage, a: float, b: float, g: float, isolate_: bool = True,
               alpha_mode: str = "scalar", channels: int = C) -> SlotState:
    state = SlotState.dormant("mid", channels=channels, alpha_mode=alpha_mode)
    alpha = torch.full(state.alpha.shape, a)
    return state.replace(stage=stage, blueprint_id="test", seed_id="s1", isolate=isolate_,
                         alpha=alpha, b=torch.tensor(b), g=torch.tensor(g))


class ScaleSeed(nn.Module):
    """``s = w * x + c`` per channel: gradients have a closed form."""

    def __init__(self, channels: int = C) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 2.0, channels, dtype=torch.float64))
        self.c = nn.Parameter(torch.linspace(-1.0, 1.0, channels, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        shape = (-1, 1, 1) if x.dim() == 4 else (-1,)
        return x * self.w.view(shape) + self.c.view(shape)


def alpha_case(kind: str, host: Tensor, a: float) -> Tensor | None:
    """``None`` (the state's scalar), a per-sample or a per-channel override of value ``a``."""
    if kind == "scalar":
        return None
    if kind == "sample":
        shape = (host.shape[0],) + (1,) * (host.dim() - 1)
        return torch.full(shape, a)
    return torch.full((C,), a)


def expected_grads(host: Tensor, seed: ScaleSeed, ct: Tensor, a: Tensor, b: float, g: float):
    """Closed-form gradients of the slot formula for :class:`ScaleSeed`."""
    shape = (-1, 1, 1) if host.dim() == 4 else (-1,)
    w = seed.w.detach().view(shape)
    seed_cot = (a + b) * ct
    reduce = (0, 2, 3) if host.dim() == 4 else (0, 1)
    grad_host = (1 - a) * ct + (1 - g) * w * seed_cot
    return grad_host, (seed_cot * host.detach()).sum(reduce), seed_cot.sum(reduce)


def run(forward: Callable[..., Tensor], state: SlotState, seed: nn.Module, host0: Tensor,
        ct: Tensor, alpha: Tensor | None):
    host = host0.clone().requires_grad_()
    out = forward(state, seed, host, alpha)
    grads = torch.autograd.grad(out, [host, *seed.parameters()], ct)
    return out, grads


def eager(state, seed, host, alpha):
    return slot_forward(state, seed, host, alpha=alpha)


@pytest.mark.parametrize("layout", ["cnn", "transformer"])
@pytest.mark.parametrize("kind", ["scalar", "sample", "channel"])
@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_gradients_exact_in_every_stage(layout: str, kind: str, backend: str | None) -> None:
    torch.manual_seed(0)
    shape = (3, C, 5, 5) if layout == "cnn" else (3, 6, C)
    host0, ct = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    seed = ScaleSeed()
    counter = CompileCounterWithBackend(backend) if backend else None
    forward = torch.compile(eager, backend=counter, fullgraph=True) if counter else eager
    for stage, a, b, g, iso in COEFFICIENTS:
        state = make_state(stage, a, b, g, iso)
        alpha = alpha_case(kind, host0, a)
        out, (grad_host, grad_w, grad_c) = run(forward, state, seed, host0, ct, alpha)
        a_t = blend_weight(state.alpha if alpha is None else alpha, host0)
        want_host, want_w, want_c = expected_grads(host0, seed, ct, a_t, b, g)
        torch.testing.assert_close(grad_host, want_host, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad_w, want_w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_c, want_c, rtol=1e-12, atol=1e-12)
        if g == 1.0:  # isolation: the host gets exactly the direct path
            assert torch.equal(grad_host, (1 - a_t) * ct)
        if stage == SeedStage.TRAINING:
            assert torch.equal(out, host0)
    if counter:
        assert counter.frame_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_graph_across_coefficients_and_alpha_overrides(backend: str) -> None:
    counter = CompileCounterWithBackend(backend)
    forward = torch.compile(slot_forward, backend=counter, fullgraph=True)
    seed, host = nn.Conv2d(C, C, 3, padding=1), torch.randn(2, C, 6, 6).to(memory_format=CL)
    for stage, a, b, g, iso in COEFFICIENTS:
        forward(make_state(stage, a, b, g, iso), seed, host).sum().backward()
    assert counter.frame_count == 1
    override_counter = CompileCounterWithBackend(backend)
    forward = torch.compile(slot_forward, backend=override_counter, fullgraph=True)
    state = make_state(*COEFFICIENTS[1])
    for value in (0.0, 0.25, 0.5, 1.0):
        forward(state, seed, host, alpha=torch.full((2, 1, 1, 1), value)).sum().backward()
    assert override_counter.frame_count == 1


@pytest.mark.parametrize("stage_index", range(len(COEFFICIENTS)))
def test_fast_path_matches_reference(stage_index: int) -> None:
    torch.manual_seed(1)
    state, seed = make_state(*COEFFICIENTS[stage_index]), nn.Conv2d(C, C, 3, padding=1)
    host0, ct = torch.randn(2, C, 6, 6), torch.randn(2, C, 6, 6)
    fast = run(eager, state, seed, host0, ct, None)
    reference = run(lambda s, f, h, a: slot_forward_reference(s, f, h, alpha=a),
                    state, seed, host0, ct, None)
    torch.testing.assert_close(fast[0], reference[0], rtol=0, atol=0)
    for got, want in zip(fast[1], reference[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [None, "aot_eager"])
@pytest.mark.parametrize("kind", ["scalar", "sample", "channel"])
def test_channels_last_preserved(backend: str | None, kind: str) -> None:
    seed, state = nn.Conv2d(C, C, 3, padding=1), make_state(*COEFFICIENTS[1])
    host = torch.randn(2, C, 6, 6).to(memory_format=CL).requires_grad_()
    forward = slot_forward
    if backend is not None:
        forward = torch.compile(slot_forward, backend=backend, fullgraph=True)
    out = forward(state, seed, host, alpha=alpha_case(kind, host, 0.3))
    out.backward(torch.randn(2, C, 6, 6).to(memory_format=CL))
    assert out.is_contiguous(memory_format=CL)
    assert host.grad is not None and host.grad.is_contiguous(memory_format=CL)


def test_compiled_func_grad_keeps_custom_backward() -> None:
    """Regression: a torch.func.grad primal straight into slot_forward under compile."""
    state, seed = make_state(*COEFFICIENTS[1]), nn.Conv2d(C, C, 3, padding=1)
    host, ct = torch.randn(2, C, 5, 5), torch.randn(2, C, 5, 5)

    def host_grad(h: Tensor) -> Tensor:
        return torch.func.grad(lambda x: (slot_forward(state, seed, x) * ct).sum())(h)

    compiled = torch.compile(host_grad, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(host), (1 - state.alpha) * ct)
    assert torch.equal(host_grad(host), (1 - state.alpha) * ct)


def test_vmap_over_counterfactual_alphas() -> None:
    state, seed = make_state(*COEFFICIENTS[1]), nn.Conv2d(C, C, 1)
    host = torch.randn(2, C, 3, 3)
    alphas = torch.tensor([0.0, 0.5, 1.0])
    batched = torch.func.vmap(lambda a: slot_forward(state, seed, host, alpha=a))(alphas)
    for a, out in zip(alphas, batched, strict=True):
        torch.testing.assert_close(out, torch.lerp(host, seed(host), a))


def test_training_forward_is_host_and_ste_isolate_semantics() -> None:
    host = torch.randn(2, C, 3, 3, requires_grad=True)
    s = torch.randn(2, C, 3, 3, requires_grad=True)
    assert torch.equal(ste(host, s), host)
    grad_host, grad_s = torch.autograd.grad(ste(host, s).sum(), [host, s])
    assert torch.equal(grad_host, torch.ones_like(host)) and torch.equal(grad_s, grad_host)
    isolated = isolate(host, torch.tensor(1.0))
    assert torch.equal(isolated, host)
    assert torch.equal(torch.autograd.grad(isolated.sum(), host)[0], torch.zeros_like(host))


def test_blend_never_mutates_alpha() -> None:
    host, s = torch.zeros(2, C, 3, 3), torch.ones(2, C, 3, 3)
    for alpha in (torch.tensor(1.5), torch.tensor([-0.5, 0.2, 0.7, 2.0]),
                  torch.full((2, 1, 1, 1), 3.0)):
        before = alpha.clone()
        out = blend(host, s, alpha)
        assert torch.equal(alpha, before)
        assert out.min() >= 0 and out.max() <= 1
        slot_forward(make_state(*COEFFICIENTS[1]), nn.Identity(), host, alpha=alpha)
        assert torch.equal(alpha, before)


def test_broadcast_alpha_shapes_and_errors() -> None:
    cnn, tokens = torch.zeros(2, C, 3, 3), torch.zeros(2, 5, C)
    assert broadcast_alpha(torch.ones(C), cnn).shape == (C, 1, 1)
    assert broadcast_alpha(torch.ones(C), tokens).shape == (C,)
    assert broadcast_alpha(torch.ones(2, 1, 1, 1), cnn).shape == (2, 1, 1, 1)
    assert broadcast_alpha(torch.ones(2, 1, 1), tokens).shape == (2, 1, 1)
    for bad, host in ((torch.ones(C + 1), cnn), (torch.ones(2, 1), cnn),
                      (torch.ones(3, 1, 1, 1), cnn), (torch.ones(C + 1), tokens)):
        with pytest.raises(ValueError, match="alpha"):
            broadcast_alpha(bad, host)


def test_check_channel_alpha() -> None:
    vector = torch.zeros(C)
    assert check_channel_alpha(vector, C) is vector
    for bad in (None, torch.tensor(0.0), torch.zeros(C + 1), torch.zeros(1, C)):
        with pytest.raises(ValueError, match=f"vector of {C} alphas"):
            check_channel_alpha(bad, C)


def test_shape_changing_seed_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"host \(2, 4, 4, 4\), seed output \(2, 4, 2, 2\)"):
        slot_forward(make_state(*COEFFICIENTS[1]), nn.MaxPool2d(2), torch.zeros(2, C, 4, 4))


@pytest.mark.parametrize("kind", ["scalar", "sample", "channel"])
def test_alpha_requiring_grad_gets_its_gradient(kind: str) -> None:
    torch.manual_seed(2)
    state, seed = make_state(*COEFFICIENTS[1]), nn.Conv2d(C, C, 1)
    host, ct = torch.randn(2, C, 3, 3), torch.randn(2, C, 3, 3)
    alpha0 = alpha_case(kind, host, 0.4)
    alpha0 = torch.tensor(0.4) if alpha0 is None else alpha0
    grads = []
    for forward in (slot_forward, slot_forward_reference):
        alpha = alpha0.clone().requires_grad_()
        out = forward(state, seed, host, alpha=alpha)
        grads.append(torch.autograd.grad(out, alpha, ct)[0])
    assert grads[0].shape == alpha0.shape
    torch.testing.assert_close(grads[0], grads[1])
