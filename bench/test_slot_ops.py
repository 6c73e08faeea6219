"""Slot forward + backward on ``mid`` features (64 x 64 x 16 x 16, channels_last).

Run the table with::

    pytest bench/test_slot_ops.py --benchmark-enable
    ESPER_BENCH_COMPILE=1 pytest bench/test_slot_ops.py --benchmark-enable  # + inductor (~30 s)

Every case is one forward and one backward of a random cotangent, in BLENDING
coefficients (a = 0.3, b = 0, g = 1), with the ``norm`` seed unless named.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from esper.core.state import SlotState
from esper.leyline import SeedStage
from esper.nn.blueprints import create
from esper.ops.formula import slot_forward, slot_forward_reference

MID_SHAPE = (64, 64, 16, 16)


def _features(requires_grad: bool = True) -> Tensor:
    x = torch.randn(MID_SHAPE).to(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def _blending_state() -> SlotState:
    state = SlotState.dormant("mid", channels=MID_SHAPE[1])
    return state.replace(stage=SeedStage.BLENDING, blueprint_id="norm", seed_id="bench",
                         alpha=torch.tensor(0.3), b=torch.tensor(0.0), g=torch.tensor(1.0))


def _fwd_bwd(forward: Callable[[Tensor], Tensor], host: Tensor,
             params: list[nn.Parameter]) -> Callable[[], None]:
    cotangent = torch.randn(MID_SHAPE).to(memory_format=torch.channels_last)

    def step() -> None:
        host.grad = None
        for p in params:
            p.grad = None
        forward(host).backward(cotangent)

    return step


def test_group_norm_native(benchmark) -> None:
    """DESIGN.md's reference: ``nn.GroupNorm`` alone, input requiring grad."""
    norm = nn.GroupNorm(8, MID_SHAPE[1])
    benchmark(_fwd_bwd(norm, _features(), list(norm.parameters())))


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_norm_seed(benchmark, input_requires_grad: bool) -> None:
    """Our ``norm`` seed alone (residual group norm); False is the once-crashing case."""
    seed = create("cnn", "norm", MID_SHAPE[1])
    benchmark(_fwd_bwd(seed, _features(input_requires_grad), list(seed.parameters())))


@pytest.mark.parametrize("blueprint", ["norm", "noop"])
@pytest.mark.parametrize("forward", [slot_forward_reference, slot_forward],
                         ids=["six_op_formula", "autograd_functions"])
def test_slot_eager(benchmark, forward: Callable[..., Tensor], blueprint: str) -> None:
    """The whole slot, eager: plain formula vs the two custom Functions.

    With ``noop`` the seed costs nothing, so the time is the formula's own.
    """
    seed, state = create("cnn", blueprint, MID_SHAPE[1]), _blending_state()
    step = _fwd_bwd(lambda h: forward(state, seed, h), _features(), list(seed.parameters()))
    benchmark(step)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ESPER_BENCH_COMPILE"),
                    reason="inductor compile costs ~30 s here: set ESPER_BENCH_COMPILE=1")
def test_slot_compiled_inductor(benchmark) -> None:
    """The whole slot (Functions) compiled with inductor, fullgraph."""
    seed, state = create("cnn", "norm", MID_SHAPE[1]), _blending_state()
    compiled = torch.compile(slot_forward, fullgraph=True)
    step = _fwd_bwd(lambda h: compiled(state, seed, h), _features(), list(seed.parameters()))
    step()
    benchmark(step)
