"""The seed's health flags, read by the compiled step to skip an update without a host sync.

As AMP's ``GradScaler`` skips steps, with selects: the trainer reads the flags
on the host only when it syncs anyway, and then feeds the breaker
(:mod:`esper.core.breaker`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..leyline.constants import DEFAULT_MAX_BLEND_ACTIVATION_RATIO


class SeedHealth(NamedTuple):
    """How a seed behaved in one forward: two 0-d bool device tensors (no host sync).

    Attributes:
        fault: the slot's input was finite and the seed's output was not; a NaN
            or infinity arriving from the host is the host's, not the seed's.
        blowup: the seed's output was finite but, weighted by its alpha, larger
            than ``max_ratio`` times the largest host activation at the slot: the
            blend would swamp the host (the host-alone counterfactual of the
            slot's activations is ``host`` itself). Never set while ``a = 0``.
    """

    fault: torch.Tensor
    blowup: torch.Tensor


def seed_health(host: torch.Tensor, seed_out: torch.Tensor, a: torch.Tensor,
                max_ratio: float = DEFAULT_MAX_BLEND_ACTIVATION_RATIO) -> SeedHealth:
    """The :class:`SeedHealth` of one slot forward, from two max-abs reductions.

    Max-abs is used rather than a norm because it cannot overflow for finite
    inputs, and ``amax`` propagates NaN, so a non-finite tensor gives a
    non-finite maximum.

    Arguments:
        host: the features arriving at the slot.
        seed_out: the seed's output, same shape.
        a: the effective blend weight (broadcastable to ``host``).
        max_ratio: how many times the host's largest activation the weighted
            seed may reach before it counts as a blow-up.
    """
    host_max = host.detach().abs().amax().float()
    seed_max = seed_out.detach().abs().amax().float()
    host_ok, seed_ok = torch.isfinite(host_max), torch.isfinite(seed_max)
    fault = host_ok & ~seed_ok
    weighted = a.detach().amax().float() * seed_max
    blowup = host_ok & seed_ok & (host_max > 0) & (weighted > max_ratio * host_max)
    return SeedHealth(fault, blowup)
