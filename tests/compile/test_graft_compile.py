"""A grafted model's whole seed life is one graph: ResNet-18 (cnn), nanoGPT (transformer), MLP.

Two ways to train, both with ``fullgraph=True`` and zero graph breaks, from
TRAINING through BLENDING and HOLDING to FOSSILIZED on one compiled frame: a
functional step (``torch.func.functional_call`` + ``grad_and_value``, the
slot states an input of the step, as the trainer runs it) and
``torch.compile(model)`` with ``loss.backward()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import esper
from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.nn import MorphogeneticModel
from tests.graft_models import gpt, images, mlp, resnet18, tokens, vectors

STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)

# layout -> (model, input, points, the seeded point, its blueprint)
Case = tuple[Callable[[], nn.Module], Callable[[], Tensor], tuple[str, ...], str, str]
CASES: dict[str, Case] = {
    "cnn": (resnet18, images, ("layer2", "layer3.0"), "layer3.0", "conv_light"),
    "transformer": (gpt, tokens, ("transformer.h.0", "transformer.h.2.mlp"),
                    "transformer.h.0", "lora"),
    "mlp": (mlp, vectors, ("1", "3"), "3", "lowrank"),
}


def seeded(layout: str) -> tuple[MorphogeneticModel, Tensor, str]:
    make, inputs, points, point, blueprint = CASES[layout]
    x = inputs()
    model = esper.graft(make(), points, example_input=x)
    model.germinate_seed(blueprint, "s1", slot=point)
    with torch.no_grad():
        for p in model.get_seed_parameters(point):
            p.add_(0.05 * torch.randn_like(p))
    for other in points:
        if other != point:
            model.germinate_seed("noop", f"n-{other}", slot=other)
    return model, x, point


def loss_of(out: Any) -> Tensor:
    return out.float().square().mean()


@pytest.mark.parametrize("layout", CASES)
def test_functional_step_is_one_graph_for_the_whole_life(layout: str) -> None:
    model, x, point = seeded(layout)

    def train_step(params: dict[str, Tensor], buffers: dict[str, Tensor],
                   states: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        def loss_fn(p: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[Tensor, Any]:
            out = model.functional_forward(p, states, x, b, aux=True)
            return loss_of(out.logits), out.health[point].fault

        grads, (loss, _) = torch.func.grad_and_value(loss_fn, has_aux=True)(params, buffers)
        return loss, {name: p - 0.01 * grads[name] for name, p in params.items()}

    counters.clear()
    cnt = CompileCounterWithBackend("aot_eager")
    step = torch.compile(train_step, backend=cnt, fullgraph=True)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    eager_params = dict(params)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    eager_buffers = {k: v.clone() for k, v in model.named_buffers()}
    state = model.seed_slots[point].state
    for stage in STAGES:
        state = transition(state, stage)
        loss, params = step(params, buffers, {point: state})
        eager_loss, eager_params = train_step(eager_params, eager_buffers, {point: state})
        torch.testing.assert_close(loss, eager_loss)
    assert cnt.frame_count == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("layout", CASES)
def test_compiled_model_and_backward_is_one_graph_for_the_whole_life(layout: str) -> None:
    model, x, point = seeded(layout)
    counters.clear()
    cnt = CompileCounterWithBackend("aot_eager")
    forward = torch.compile(model, backend=cnt, fullgraph=True)
    slot = model.seed_slots[point]
    for stage in STAGES:
        slot.state = transition(slot.state, stage)
        loss = loss_of(forward(x))
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None for p in model.get_seed_parameters(point))
        model.zero_grad()
    assert cnt.frame_count == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("layout", CASES)
def test_the_product_step_trains_a_grafted_model_in_one_graph(layout: str) -> None:
    """``esper grow``'s step (``train_step`` through ``build_step``) on a grafted model: its
    optimizer groups are named by module path, every stage reuses one graph and updates
    the host and the seed."""
    from esper.optim import OptimizerState
    from esper.tolaria.compiled import build_step
    from esper.tolaria.inputs import StepInputs

    model, x, point = seeded(layout)
    logits = model(x)
    y = torch.randint(0, logits.shape[-1], logits.shape[:-1],
                      generator=torch.Generator().manual_seed(0))
    optimizer = OptimizerState().synced(model)
    assert point in optimizer.groups and all(n.startswith("seed_slots.") for n in
                                             optimizer.groups[point])
    counter = CompileCounterWithBackend("aot_eager")
    step = build_step(compile=True, counter=counter)
    inputs = StepInputs.of(model, optimizer)
    state = inputs.states[point]
    counters.clear()
    for stage in STAGES:
        state = transition(state, stage)
        states = {**inputs.states, point: state}
        before = {k: v.clone() for k, v in model.host.named_parameters()}
        result = step(model, StepInputs(**{**vars(inputs), "states": states}), x, y)
        assert bool(result.updated.all()) and bool(result.loss.isfinite())
        assert any(not torch.equal(before[k], v) for k, v in model.host.named_parameters())
    assert counter.frame_count == 1
    assert sum(counters["graph_break"].values()) == 0
