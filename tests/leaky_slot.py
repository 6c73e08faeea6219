"""A deliberately broken slot for isolation tests: its seed reads the raw host features."""

from __future__ import annotations

from torch import Tensor

from esper.kasmina.ops import slot_forward
from esper.kasmina.slot import SeedSlot


class LeakySlot(SeedSlot):
    """A broken slot: its seed reads the host features without the isolation step."""

    def forward(self, host: Tensor, state=None, alpha=None) -> Tensor:
        if self.seed is None:
            return host
        seed = self.seed
        return slot_forward(state or self.state, lambda _isolated: seed(host), host, alpha=alpha)
