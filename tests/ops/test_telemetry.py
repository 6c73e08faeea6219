"""Gradient telemetry: sync-free capture, one-sync materialize, the G2 ratio."""

from __future__ import annotations

import math

import pytest
import torch

from esper.kasmina import SlotState, germinate
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.nn.slot import SeedSlot
from esper.ops.telemetry import (
    GradientEMA,
    capture,
    due,
    gradient_ratio,
    materialize,
    record,
)


def params_with_grads(*values: float, shape=(3, 4)) -> list[torch.nn.Parameter]:
    out = []
    for v in values:
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.full(shape, v)
        out.append(p)
    return out


def test_capture_returns_device_tensors_without_a_host_sync(monkeypatch):
    host, seed = params_with_grads(1.0, 2.0), params_with_grads(0.5)

    def no_sync(*args, **kwargs):
        raise AssertionError("capture synchronised with the host")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    sample = capture(host, {"mid": seed})
    monkeypatch.undo()
    assert isinstance(sample.squared, torch.Tensor) and sample.squared.dtype == torch.float32
    assert sample.squared.tolist() == pytest.approx([12 * 1 + 12 * 4, 12 * 0.25])


def test_ratio_formula_and_materialize():
    host, seed = params_with_grads(1.0, 1.0), params_with_grads(0.5)
    stats = materialize(capture(host, {"mid": seed}))["mid"]
    host_norm, seed_norm = math.sqrt(24.0), math.sqrt(3.0)
    assert stats.host_norm == pytest.approx(host_norm)
    assert stats.seed_norm == pytest.approx(seed_norm)
    assert stats.ratio == pytest.approx(seed_norm / host_norm * math.sqrt(24 / 12))


def test_ratio_is_zero_without_host_gradient_and_capped():
    assert gradient_ratio(1.0, 0.0, 10, 100) == 0.0
    assert gradient_ratio(1.0, 1e-20, 10, 100) == 0.0
    assert gradient_ratio(1e9, 1.0, 10, 100, cap=10.0) == 10.0
    assert gradient_ratio(1.0, 1.0, 0, 100) == 0.0


def test_none_gradients_are_skipped_but_parameters_counted():
    host = [*params_with_grads(1.0), torch.nn.Parameter(torch.zeros(3, 4))]
    sample = capture(host, {"mid": params_with_grads(1.0)})
    assert sample.host_params == 24
    assert sample.squared[0].item() == pytest.approx(12.0)


def test_ema_is_bias_corrected_and_tracks_slots():
    host, seed = params_with_grads(1.0), params_with_grads(2.0)
    sample = capture(host, {"mid": seed})
    ema = GradientEMA.start(sample, decay=0.9)
    for _ in range(5):
        ema = ema.update(sample)
    assert torch.allclose(ema.corrected(), sample.squared)
    other = capture(host, {"late": seed})
    with pytest.raises(ValueError, match="start a new one"):
        ema.update(other)
    with pytest.raises(ValueError, match="decay"):
        GradientEMA.start(sample, decay=1.0)


def test_stride():
    assert [s for s in range(25) if due(s, 10)] == [0, 10, 20]
    with pytest.raises(ValueError):
        due(3, 0)


def test_record_updates_metrics_and_validates():
    state = germinate(SlotState.dormant("mid", channels=4), "norm", "s")
    state = record(state, seed_gradient_norm_ratio=0.25, isolation_violations=2)
    state = record(state, isolation_violations=1)
    assert state.metrics.seed_gradient_norm_ratio == 0.25
    assert state.metrics.isolation_violations == 3
    with pytest.raises(ValueError):
        record(state, isolation_violations=-1)
    with pytest.raises(ValueError):
        record(state, seed_gradient_norm_ratio=float("nan"))


def test_gated_blend_parameters_count_as_seed():
    model = MorphogeneticModel(CNNHost(base_channels=8), slots=("mid",))
    model.germinate_seed("norm", "s1", slot="mid", blend_algorithm_id="gated")
    slot = model.seed_slots["mid"]
    sample = capture(model.get_host_parameters(), {"mid": model.get_seed_parameters("mid")})
    expected = sum(p.numel() for p in slot.seed.parameters()) + sum(
        p.numel() for p in slot.gate.parameters())
    assert sample.seed_params == (expected,)


def test_standalone_slot_needs_host_parameters_and_a_seed():
    slot = SeedSlot("mid", 8)
    with pytest.raises(RuntimeError, match="no seed"):
        slot.capture_gradient_telemetry(params_with_grads(1.0))
    slot.germinate("norm", "s1")
    with pytest.raises(ValueError, match="host_parameters"):
        slot.capture_gradient_telemetry()
    for p in slot.parameters():
        p.grad = torch.ones_like(p)
    report = slot.capture_gradient_telemetry(params_with_grads(1.0))
    assert report.gradients.ratio > 0
    assert slot.state.metrics.seed_gradient_norm_ratio == report.gradients.ratio


def test_model_record_gradients_feeds_g2():
    model = MorphogeneticModel(CNNHost(base_channels=8), slots=("early", "mid"))
    model.germinate_seed("conv_light", "s1", slot="mid")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    sample = capture(model.get_host_parameters(), {"mid": model.get_seed_parameters("mid")})
    stats = model.record_gradients(sample)
    assert set(stats) == {"mid"}
    assert model.seed_slots["mid"].state.metrics.seed_gradient_norm_ratio == stats["mid"].ratio
