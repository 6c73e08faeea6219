"""Exact gradients of the compiled model (aot_eager traces the backward too).

TRAINING: the output equals the host's in value, its gradient to the host is
1 on the direct path, and the seed's input is isolated, so every host
parameter gets exactly the bare host's gradient. FOSSILIZED: the seed is part
of the network, and the host blocks before the slot learn through it.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from compile_support import SEED_SLOT, Tiny, lifecycle_states, randomize_seed
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

from esper.leyline import SeedStage

TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}


def _module_grads(tiny: Tiny, module: nn.Module, forward) -> dict[str, Tensor]:
    for p in module.parameters():
        p.grad = None
    tiny.loss(forward(tiny.x)).backward()
    return {name: p.grad for name, p in module.named_parameters()}


def _functional_grads(tiny: Tiny, module: nn.Module, forward, backend: str) -> dict[str, Tensor]:
    """``torch.func.grad`` of ``forward(params, buffers, x)``, compiled with ``fullgraph=True``.

    The buffers are an input of the transformed function: BatchNorm updates them in place.
    """
    def grads(params, buffers, x, y):
        def loss_fn(p, b):
            logits = forward(p, b, x)
            return F.cross_entropy(logits.flatten(0, -2), y.flatten())
        return torch.func.grad(loss_fn)(params, buffers)

    cnt = CompileCounterWithBackend(backend)
    compiled = torch.compile(grads, backend=cnt, fullgraph=True)
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    result = compiled(params, buffers, tiny.x, tiny.y)
    assert cnt.frame_count == 1
    return result


@pytest.mark.parametrize("path", ["module", "functional"])
def test_training_seed_leaves_host_gradients_exact(tiny: Tiny, path: str) -> None:
    tiny.slot.advance_stage(SeedStage.TRAINING)
    assert tiny.slot.state.stage == SeedStage.TRAINING
    randomize_seed(tiny)  # a seed whose output differs from the host's features
    model, bare = tiny.model, copy.deepcopy(tiny.model.host)
    if path == "module":
        cnt = CompileCounterWithBackend("aot_eager")
        seeded = _module_grads(tiny, model, torch.compile(model, backend=cnt, fullgraph=True))
        assert cnt.frame_count == 1
    else:
        states = model.slot_states()
        seeded = _functional_grads(
            tiny, model, lambda p, b, x: model.functional_forward(p, states, x, b), "aot_eager")
    expected = _module_grads(tiny, bare, bare)

    for name, grad in expected.items():
        torch.testing.assert_close(seeded[f"host.{name}"], grad, **TOLERANCE)
    seed_grads = {name: g for name, g in seeded.items()
                  if name.startswith(f"seed_slots.{SEED_SLOT}.")}
    assert seed_grads and all(g.abs().sum() > 0 for g in seed_grads.values()), seed_grads


def test_fossilized_seed_passes_gradients_to_every_host_block(tiny: Tiny) -> None:
    """Same gradients as the host with the seed composed in by hand; none of them zero.

    In FOSSILIZED (a = 1, g = 0) the direct path carries nothing, so blocks
    before the slot are reached only through the seed.
    """
    tiny.slot.state = lifecycle_states(tiny.slot.state)[-1]
    assert tiny.slot.state.stage == SeedStage.FOSSILIZED
    randomize_seed(tiny)
    model, reference = tiny.model, copy.deepcopy(tiny.model)
    host, seed = reference.host, reference.seed_slots[SEED_SLOT].seed

    def composed(x: Tensor) -> Tensor:
        h = x
        for name in host.segment_names():
            h = host.run_segment(name, h)
            h = seed(h) if name == SEED_SLOT else h
        return host.run_head(h)

    cnt = CompileCounterWithBackend("aot_eager")
    seeded = _module_grads(tiny, model, torch.compile(model, backend=cnt, fullgraph=True))
    expected = _module_grads(tiny, reference, composed)
    assert cnt.frame_count == 1
    assert seeded.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(seeded[name], grad, **TOLERANCE)
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
