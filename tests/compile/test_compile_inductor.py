"""The one inductor test: the product training step, a whole lifecycle, one graph.

Inductor compiles C++ kernels (about half a minute cold on a two-core CPU), so
the suite holds exactly one such test; the others use eager and aot_eager.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from compile_support import SEED_SLOT, build_tiny, lifecycle_states, step_inputs
from torch._dynamo.testing import CompileCounterWithBackend

from esper.tolaria.compiled import build_step
from esper.tolaria.step import train_step


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_training_step_one_graph_matches_eager() -> None:
    tiny = build_tiny("cnn")
    cnt = CompileCounterWithBackend("inductor")
    compiled_step = build_step(True, cnt)
    run = lifecycle_states(tiny.slot.state)
    run += [run[-2].with_alpha(0.0), run[-2].with_alpha(0.5)]  # overrides in HOLDING

    inputs, expected = step_inputs(tiny), step_inputs(tiny, own_buffers=True)
    others = tiny.model.slot_states()
    for state in run:
        states = {**others, SEED_SLOT: state}
        result = compiled_step(tiny.model, replace(inputs, states=states), tiny.x, tiny.y)
        reference = train_step(tiny.model, replace(expected, states=states), tiny.x, tiny.y)
        torch.testing.assert_close(result.loss, reference.loss, atol=1e-5, rtol=1e-5)

    assert cnt.frame_count == 1
    for name, value in expected.params.items():
        torch.testing.assert_close(inputs.params[name], value, atol=1e-4, rtol=1e-4)
    for name, value in expected.buffers.items():
        torch.testing.assert_close(inputs.buffers[name], value, atol=1e-4, rtol=1e-4)
