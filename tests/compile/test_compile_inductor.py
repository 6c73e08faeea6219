"""The one inductor test: the functional training step, a whole lifecycle, one graph.

Inductor compiles C++ kernels (about half a minute cold on a two-core CPU), so
the suite holds exactly one such test; the others use eager and aot_eager.
"""

from __future__ import annotations

import pytest
import torch
from compile_support import SEED_SLOT, build_tiny, lifecycle_states, make_train_step
from torch._dynamo.testing import CompileCounterWithBackend


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_inductor_training_step_one_graph_matches_eager() -> None:
    tiny = build_tiny("cnn")
    eager_step = make_train_step(tiny)
    cnt = CompileCounterWithBackend("inductor")
    compiled_step = torch.compile(eager_step, backend=cnt, fullgraph=True)
    run = lifecycle_states(tiny.slot.state)
    run += [run[-2].with_alpha(0.0), run[-2].with_alpha(0.5)]  # overrides in HOLDING

    params, expected_params = tiny.params(), tiny.params()
    buffers = tiny.buffers()
    expected_buffers = {name: b.clone() for name, b in buffers.items()}
    others = tiny.model.slot_states()
    for state in run:
        states = {**others, SEED_SLOT: state}
        loss, params = compiled_step(params, buffers, states, tiny.x, tiny.y)
        expected_loss, expected_params = eager_step(
            expected_params, expected_buffers, states, tiny.x, tiny.y)
        torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)

    assert cnt.frame_count == 1
    for name, value in expected_params.items():
        torch.testing.assert_close(params[name], value, atol=1e-4, rtol=1e-4)
    for name, value in expected_buffers.items():
        torch.testing.assert_close(buffers[name], value, atol=1e-4, rtol=1e-4)
