"""Blend algorithms: how the scheduled alpha becomes the alpha of the forward.

``linear`` and ``sigmoid`` use the schedule's alpha as it is (their schedules
live in the lifecycle) and need no module. ``gated`` adds :class:`GatedBlend`,
a small learned gate giving each sample a factor ``s`` in [0, 1] that bends
the scheduled ``a`` to

    a_eff = a + a * (1 - a) * (2 * s - 1)

which is exactly 0 at ``a = 0`` and exactly 1 at ``a = 1`` (TRAINING and
FOSSILIZED are untouched without any stage branching) and lies in
``[a**2, a * (2 - a)]``. The gate reads the seed's (isolated) input, so while
``g = 1`` none of its gradient reaches the host.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ..leyline import TOPOLOGIES, Topology


class GatedBlend(nn.Module):
    """Learned per-sample alpha: a pooled-feature MLP bends the scheduled alpha.

    For a CNN the gate pools ``[B, C, H, W]`` over H and W and gives one factor
    per sample. For a transformer it pools ``[B, T, C]`` causally (the running
    mean up to each token), giving one factor per sample and token, so that no
    token's alpha depends on later tokens. For an MLP it reads each sample's
    ``[B, C]`` features as they are, giving one factor per sample. The gate
    starts neutral (``s = 0.5``, ``a_eff = a``) because its output layer is
    zero-initialised.

    Arguments:
        channels: channels of the injection point.
        topology: the feature layout, ``"cnn"``, ``"transformer"`` or ``"mlp"``.
        hidden: width of the gate's hidden layer (default ``max(8, channels // 4)``).

    Example:
        >>> gate = GatedBlend(16, "cnn")
        >>> a_eff = gate(torch.randn(4, 16, 8, 8), torch.tensor(0.3))
        >>> tuple(a_eff.shape)
        (4, 1, 1, 1)
    """

    def __init__(self, channels: int, topology: Topology, hidden: int | None = None) -> None:
        super().__init__()
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; known topologies: {TOPOLOGIES}")
        self.topology = topology
        hidden = hidden if hidden is not None else max(8, channels // 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def factor(self, seed_in: Tensor) -> Tensor:
        """The gate value ``s`` in [0, 1], shaped to broadcast against ``seed_in``.

        Returns:
            ``[B, 1, 1, 1]`` for a CNN, ``[B, T, 1]`` for a transformer, ``[B, 1]``
            for an MLP.
        """
        if self.topology == "cnn":
            pooled = seed_in.mean(dim=tuple(range(2, seed_in.dim())))
        elif self.topology == "transformer":
            counts = torch.arange(1, seed_in.shape[1] + 1, device=seed_in.device)
            pooled = seed_in.cumsum(dim=1) / counts.to(seed_in.dtype)[:, None]
        else:
            pooled = seed_in
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))
        if self.topology == "cnn":
            return s.view(s.shape[0], *([1] * (seed_in.dim() - 1)))
        return s

    def forward(self, seed_in: Tensor, a: Tensor) -> Tensor:
        """The effective alpha for scheduled ``a`` (already broadcast to ``seed_in``).

        Arguments:
            seed_in: the seed's input features.
            a: the scheduled alpha: 0-d, per-sample or per-channel, broadcastable.

        Returns:
            ``a + a * (1 - a) * (2 * s - 1)``, clamped to [0, 1] against rounding,
            in the broadcast shape of ``a`` and the gate factor.
        """
        s = self.factor(seed_in).to(a.dtype)
        return (a + a * (1 - a) * (2 * s - 1)).clamp(0.0, 1.0)


BlendFactory = Callable[[int, Topology], nn.Module]

BLEND_FACTORIES: MappingProxyType[str, BlendFactory | None] = MappingProxyType({
    "linear": None,
    "sigmoid": None,
    "gated": GatedBlend,
})


def create_blend(algorithm_id: str, channels: int, topology: Topology) -> nn.Module | None:
    """The module a blend algorithm adds to a slot, or ``None`` if it adds none.

    Arguments:
        algorithm_id: one of ``"linear"``, ``"sigmoid"``, ``"gated"``.
        channels: channels of the injection point.
        topology: the feature layout, ``"cnn"``, ``"transformer"`` or ``"mlp"``.

    Returns:
        A :class:`GatedBlend` for ``"gated"``, ``None`` for the schedule-only algorithms.

    Raises:
        ValueError: for an unknown algorithm id (naming the known ones) or topology.
    """
    if algorithm_id not in BLEND_FACTORIES:
        raise ValueError(f"unknown blend algorithm {algorithm_id!r}; "
                         f"known: {', '.join(BLEND_FACTORIES)}")
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r}; known topologies: {TOPOLOGIES}")
    factory = BLEND_FACTORIES[algorithm_id]
    return None if factory is None else factory(channels, topology)


__all__ = ["BLEND_FACTORIES", "BlendFactory", "GatedBlend", "create_blend"]
