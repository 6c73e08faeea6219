"""Deliberately broken modules for tests: a leaky slot and a shape-changing seed."""

from __future__ import annotations

from torch import Tensor, nn

from esper.kasmina.ops import slot_forward
from esper.kasmina.slot import SeedSlot


class LeakySlot(SeedSlot):
    """A broken slot: its seed reads the host features without the isolation step."""

    def forward(self, host: Tensor, state=None, alpha=None) -> Tensor:
        if self.seed is None:
            return host
        seed = self.seed
        return slot_forward(state or self.state, lambda _isolated: seed(host), host, alpha=alpha)


class Widen(nn.Module):
    """A broken seed: one more output channel than input channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels + 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
