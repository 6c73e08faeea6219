"""The training step's extra outputs (gradient norms, probe features), eager and compiled."""

from __future__ import annotations

import copy

import pytest
import torch

from esper.tolaria.step import group_squares
from tests.broken_modules import LeakySlot


def test_group_squares_eager_and_compiled_match_float64():
    torch.manual_seed(0)
    grads = {f"p{i}": torch.randn(5 + i, 3) for i in range(6)}
    grads["cl"] = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    groups = (("p0", "p1", "p2"), ("p3", "cl"), ("p4", "p5"), ())
    expected = torch.tensor([sum(float(grads[n].double().square().sum()) for n in group)
                             for group in groups], dtype=torch.float64)
    eager = group_squares(grads, groups)
    compiled = torch.compile(group_squares, fullgraph=True, backend="aot_eager")(grads, groups)
    for result in (eager, compiled):
        assert result.dtype == torch.float32 and result.shape == (4,)
        assert torch.allclose(result.double(), expected, rtol=1e-5)
    assert compiled[3] == 0 and eager[3] == 0


def _seeded_model(slot_class=None):
    from esper.kasmina import transition
    from esper.leyline import SeedStage
    from esper.nn.host import CNNHost
    from esper.nn.model import MorphogeneticModel

    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid", "late"))
    if slot_class is not None:
        model.seed_slots["mid"] = slot_class("mid", model.seed_slots["mid"].channels)
    model.germinate_seed("conv_light", "s1", slot="mid")
    slot = model.seed_slots["mid"]
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.add_(torch.randn_like(p))
    slot.state = transition(slot.state, SeedStage.TRAINING)
    return model


def _run_step(model, step, feature_samples=8):
    from esper.optim import HOST_GROUP, OptimizerState, SGDConfig
    from esper.tolaria.inputs import StepInputs, StepOptions

    optimizer = OptimizerState(SGDConfig(momentum=0.9, weight_decay=0.0)).synced(model)
    assert next(iter(optimizer.groups)) == HOST_GROUP
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    return x, step(model, StepInputs.of(model, optimizer), x, y,
                   StepOptions(feature_samples=feature_samples))


@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_step_returns_host_features_of_the_first_samples_at_seeded_slots(backend):
    from esper.tolaria.step import train_step

    model = _seeded_model()
    reference = copy.deepcopy(model)  # BatchNorm statistics move during the step
    step = train_step if backend is None else torch.compile(train_step, fullgraph=True,
                                                            dynamic=False, backend=backend)
    x, result = _run_step(model, step)
    features = result.features
    assert list(features) == ["mid"] and features["mid"].shape[0] == 8
    with torch.no_grad():
        expected = reference(x, aux=True).features
    torch.testing.assert_close(features["mid"], expected["mid"][:8])
    assert _run_step(model, step, feature_samples=0)[1].features == {}


def test_probe_on_step_features_counts_a_leaky_seed_only():
    from esper.tolaria.step import train_step

    for slot_class, violations in ((None, 0), (LeakySlot, 1)):
        model = _seeded_model(slot_class)
        _, result = _run_step(model, train_step)
        reports = model.probe_isolation(features=result.features)
        assert reports["mid"].violated == bool(violations)
        assert model.seed_slots["mid"].state.metrics.isolation_violations == violations
