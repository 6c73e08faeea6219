"""The stateful path: a model compiled in place while its slots swap states between calls.

``nn.Module.compile`` compiles the module's own forward; lifecycle calls on the
slots (``advance_stage``, ``step_epoch``, ``fossilize``, ``force_alpha``)
replace the slot's immutable state between calls. One graph per grad mode.
"""

from __future__ import annotations

import torch
from compile_support import SEED_SLOT, build_tiny, walk_slot
from torch._dynamo.testing import CompileCounterWithBackend

from esper.leyline import SeedStage

_COMPILED_PREFIX = "_orig_mod."


def test_in_place_compiled_model_keeps_one_graph_per_grad_mode(tiny, backend: str) -> None:
    """A training graph and an eval graph (no_grad, BatchNorm in eval mode), then no more."""
    model, slot = tiny.model, tiny.slot
    cnt = CompileCounterWithBackend(backend)
    model.compile(backend=cnt, fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frames: list[tuple[int, int]] = []  # (after training, after evaluation), per state
    alphas = set()

    def train_and_evaluate() -> None:
        optimizer.zero_grad()
        loss = tiny.loss(model(tiny.x))
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        after_training = cnt.frame_count
        alphas.add(float(slot.state.alpha))
        model.eval()
        with torch.no_grad():
            model(tiny.x)
            if slot.state.stage != SeedStage.FOSSILIZED:  # forcing alpha is for a live seed
                for value in (0.0, 0.5):
                    with slot.force_alpha(value):
                        model(tiny.x)
        model.train()
        frames.append((after_training, cnt.frame_count))

    stages = walk_slot(slot, train_and_evaluate)
    assert set(stages) == {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING,
                           SeedStage.HOLDING, SeedStage.FOSSILIZED}
    assert len(alphas) >= 6, alphas
    assert frames[0] == (1, 2)
    assert all(counts == (2, 2) for counts in frames[1:]), frames


def test_in_place_compiled_state_dict_has_plain_keys(tiny) -> None:
    model = tiny.model
    plain = list(model.state_dict())
    model.compile(backend="eager", fullgraph=True)
    model(tiny.x)
    assert list(model.state_dict()) == plain
    assert not any(_COMPILED_PREFIX in key for key in plain)


def test_load_state_dict_accepts_compiled_wrapper_keys(tiny, topology: str) -> None:
    wrapped = torch.compile(tiny.model, backend="eager", fullgraph=True)
    saved = wrapped.state_dict()
    assert all(key.startswith(_COMPILED_PREFIX) for key in saved)

    fresh = build_tiny(topology, germinate=False).model
    fresh.load_state_dict(saved)
    assert fresh.seed_slots[SEED_SLOT].state.stage == SeedStage.GERMINATED
    restored, original = fresh.state_dict(), tiny.model.state_dict()
    assert list(restored) == list(original)
    for key, value in original.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(restored[key], value), key
