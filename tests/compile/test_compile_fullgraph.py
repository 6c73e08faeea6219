"""Zero graph breaks: the model and the product training step compile with ``fullgraph=True``.

``fullgraph=True`` turns any graph break into an error, so each test compiles
fresh and then checks the frame count and dynamo's graph-break counter too.
"""

from __future__ import annotations

import pytest
import torch
from compile_support import build_tiny, state_in, step_inputs
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from esper.leyline import SeedStage
from esper.tolaria.compiled import build_step

SEED_STAGES = [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING,
               SeedStage.HOLDING, SeedStage.FOSSILIZED]


def _assert_no_graph_breaks() -> None:
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_dormant_slots_compile_without_breaks(topology: str, backend: str) -> None:
    tiny = build_tiny(topology, germinate=False)
    counters.clear()
    cnt = CompileCounterWithBackend(backend)
    train_step = build_step(True, cnt)
    result = train_step(tiny.model, step_inputs(tiny), tiny.x, tiny.y)
    assert torch.isfinite(result.loss)
    assert cnt.frame_count == 1
    _assert_no_graph_breaks()


@pytest.mark.parametrize("stage", SEED_STAGES)
def test_seed_in_every_stage_compiles_without_breaks(tiny, stage: SeedStage) -> None:
    """The model's forward and backward, traced from scratch with the seed in ``stage``.

    Graph breaks are decided by dynamo's tracing, before any backend runs, so
    the cheapest backend and the cheapest graph suffice here. The training
    step runs with ``fullgraph=True`` through every stage on both backends in
    test_compile_recompiles.
    """
    tiny.slot.state = state_in(stage, tiny.slot.state)
    counters.clear()
    cnt = CompileCounterWithBackend("eager")
    forward = torch.compile(tiny.model, backend=cnt, fullgraph=True)
    loss = tiny.loss(forward(tiny.x))
    loss.backward()
    assert torch.isfinite(loss)
    assert cnt.frame_count == 1
    _assert_no_graph_breaks()
