"""MLP seeds: shape-preserving modules on ``[B, C]`` features (the ``"mlp"`` layout).

Every seed with parameters is residual and starts as the identity (the last
layer of its branch is zero-initialised; the residual is added in place into
the branch output, as in :mod:`~esper.nn.blueprints.cnn`), so blending an
untrained seed leaves the host's features unchanged. Each sample is
transformed on its own: nothing mixes the batch, so any batch size works,
one included.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .cnn import NoopSeed
from .registry import BlueprintSpec, SeedFactory, register
from .transformer import LayerNormSeed


def lowrank_rank(channels: int) -> int:
    """The rank of the ``lowrank`` seed: ``max(1, channels // 8)``."""
    return max(1, channels // 8)


class LowRankSeed(nn.Module):
    """``x + up(gelu(down(x)))`` of rank :func:`lowrank_rank`; ``up`` is zero-initialised."""

    def __init__(self, channels: int, rank: int | None = None) -> None:
        super().__init__()
        rank = rank if rank is not None else lowrank_rank(channels)
        self.down = nn.Linear(channels, rank)
        self.up = nn.Linear(rank, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(x))).add_(x)


def _register_builtins() -> None:
    builtins: list[tuple[str, SeedFactory, str]] = [
        ("noop", lambda _channels: NoopSeed(), "identity, no parameters (a control)"),
        ("norm", LayerNormSeed, "residual layer norm over the channels"),
        ("lowrank", LowRankSeed, "residual low-rank GELU MLP (rank max(1, C // 8))"),
    ]
    for name, factory, description in builtins:
        register(BlueprintSpec(name, "mlp", factory, description))


_register_builtins()

__all__ = ["LowRankSeed", "lowrank_rank"]
