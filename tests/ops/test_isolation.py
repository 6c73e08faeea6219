"""Isolation probes: host gradients are fine, leaks through the seed are not."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.gates import g2_ready_to_blend
from esper.kasmina import set_alpha, transition
from esper.leyline import SeedStage
from esper.nn.host import TransformerHost
from esper.nn.slot import SeedSlot
from esper.ops.formula import blend_weight
from esper.ops.isolation import isolation_probe, measure_leak, probe_squares
from tests.broken_modules import LeakySlot

STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)


def features(channels: int = 8) -> Tensor:
    return torch.randn(2, channels, 6, 6).to(memory_format=torch.channels_last)


def walk(slot: SeedSlot, until: SeedStage) -> None:
    for stage in STAGES[: STAGES.index(until) + 1]:
        slot.state = transition(slot.state, stage)


def perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def host_params() -> list[torch.nn.Parameter]:
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = torch.full((10,), 0.01)
    return [p]


def test_healthy_slot_has_no_violations_in_isolated_stages():
    for stage in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING):
        slot = SeedSlot("mid", 8, memory_format=torch.channels_last)
        slot.germinate("conv_heavy", "s1")
        perturb(slot.seed)
        walk(slot, stage)
        report = slot.capture_gradient_telemetry(host_params(), features()).isolation
        assert report.isolated and report.leak < 1e-6 and not report.violated
        assert slot.state.metrics.isolation_violations == 0


def test_leaky_seed_is_counted_and_fails_g2():
    slot = LeakySlot("mid", 8)
    slot.germinate("conv_heavy", "s1")
    perturb(slot.seed)
    walk(slot, SeedStage.TRAINING)
    for _ in range(11):
        report = slot.capture_gradient_telemetry(host_params(), features()).isolation
        assert report.violated and report.leak > 1e-2
    assert slot.state.metrics.isolation_violations == 11
    assert "isolation_violated" in g2_ready_to_blend(slot.state).checks_failed


def test_measure_leak_is_exact_for_the_direct_path():
    a = torch.tensor(0.3)
    h = features()
    assert measure_leak(lambda x: torch.lerp(x, torch.zeros_like(x), a), h, a) < 1e-6
    assert measure_leak(lambda x: x * 2.0, h, a) > 1.0


def test_transformer_co_adaptation_is_not_a_violation():
    host = TransformerHost(vocab_size=16, n_embd=16, n_head=2, n_layer=3, block_size=8)
    slot = SeedSlot("mid", 16, topology="transformer")
    slot.germinate("mlp", "s1")
    perturb(slot.seed)
    walk(slot, SeedStage.BLENDING)
    slot.state = set_alpha(slot.state, 0.5)
    assert slot.state.isolate is False
    report = slot.capture_gradient_telemetry(list(host.parameters()),
                                             torch.randn(2, 8, 16)).isolation
    assert not report.isolated and report.leak > 0 and not report.violated


def test_fossilized_seed_is_not_isolated():
    slot = SeedSlot("mid", 8)
    slot.germinate("norm", "s1")
    walk(slot, SeedStage.FOSSILIZED)
    report = slot.capture_gradient_telemetry(host_params(), features()).isolation
    assert not report.isolated and not report.violated


def test_gated_blend_gate_path_is_reported_separately():
    slot = SeedSlot("mid", 8)
    slot.germinate("conv_light", "s1", blend_algorithm_id="gated")
    perturb(slot.seed)
    perturb(slot.gate)
    walk(slot, SeedStage.BLENDING)
    slot.state = set_alpha(slot.state, 0.5)
    report = slot.capture_gradient_telemetry(host_params(), features()).isolation
    assert report.gate_leak == 0.0 and not report.violated  # the gate reads isolated input
    # A gate reading the raw host features: its path is reported, never counted.
    gate = slot.gate
    report = isolation_probe(lambda h, s, a: slot(h, s, alpha=a), slot.state, features(),
                             gate_fn=lambda h, s: gate(h, blend_weight(s.alpha, h)))
    assert report.gate_leak > 0 and not report.violated


def _probed_slot(slot_class, blueprint: str, stage: SeedStage, blend: str = "linear") -> SeedSlot:
    torch.manual_seed(0)
    slot = slot_class("mid", 8, memory_format=torch.channels_last)
    slot.germinate(blueprint, "s1", blend_algorithm_id=blend)
    perturb(slot)
    walk(slot, stage)
    if stage is SeedStage.BLENDING:
        slot.state = set_alpha(slot.state, 0.4)
    return slot


@pytest.mark.parametrize(("slot_class", "blueprint", "stage", "blend"), [
    (SeedSlot, "norm", SeedStage.TRAINING, "linear"),
    (SeedSlot, "conv_light", SeedStage.BLENDING, "gated"),
    (LeakySlot, "conv_heavy", SeedStage.TRAINING, "linear"),
    (LeakySlot, "conv_light", SeedStage.BLENDING, "linear"),
])
def test_compiled_probe_matches_eager(slot_class, blueprint, stage, blend):
    slot = _probed_slot(slot_class, blueprint, stage, blend)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(probe_squares, fullgraph=True, backend=counter)
    h = features()
    eager = slot.probe_isolation(h, torch.Generator().manual_seed(5))
    traced = slot.probe_isolation(h, torch.Generator().manual_seed(5), squares=compiled)
    assert counter.frame_count == 1
    assert traced.violated == eager.violated == (slot_class is LeakySlot)
    assert traced.leak == pytest.approx(eager.leak, rel=1e-5, abs=1e-7)
    assert traced.gate_leak == pytest.approx(eager.gate_leak, rel=1e-5, abs=1e-7)


def test_compiled_probe_reuses_its_graph_across_alpha_and_stage():
    slot = _probed_slot(SeedSlot, "norm", SeedStage.TRAINING)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(probe_squares, fullgraph=True, backend=counter)
    h = features()
    leaks = []
    for stage in (SeedStage.BLENDING, SeedStage.HOLDING):
        slot.state = transition(slot.state, stage)
        for alpha in (0.1, 0.7):
            if stage is SeedStage.BLENDING:
                slot.state = set_alpha(slot.state, alpha)
            leaks.append(slot.probe_isolation(h, squares=compiled).leak)
    assert counter.frame_count == 1
    assert max(leaks) < 1e-6


def test_probe_squares_gives_the_squared_norms():
    slot = _probed_slot(LeakySlot, "conv_light", SeedStage.TRAINING)
    h, v, w = features(), torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    squares = probe_squares(lambda h, s, a: slot(h, s, alpha=a), None, slot.state, h, v, w)
    assert squares.dtype == torch.float64 and squares.shape == (4,)
    hx = h.detach().requires_grad_(True)
    (through,) = torch.autograd.grad(slot(hx), hx, v)
    expected = (through - v).double().square().sum()  # a = 0 in TRAINING
    torch.testing.assert_close(squares[0], expected)
    torch.testing.assert_close(squares[1], v.double().square().sum())
    assert squares[2:].tolist() == [0.0, 0.0]
