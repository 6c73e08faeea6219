"""The training step's gradient-norm output, eager and compiled."""

from __future__ import annotations

import torch

from esper.tolaria.step import group_squares


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
