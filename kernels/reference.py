"""Plain-torch float64 references for the kernels, used by the tests.

Slow and simple on purpose: each tensor is upcast to float64 and reduced alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def squared_norms_reference(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 sum of squares of each tensor.

    Arguments:
        tensors: floating-point tensors (any device, dtype and layout).

    Returns:
        A float64 CPU tensor of shape ``(len(tensors),)``.
    """
    sums = [t.detach().to("cpu", torch.float64).square().sum() for t in tensors]
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)


def group_squared_norms_reference(groups: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Float64 sum of squares over each group of tensors.

    Arguments:
        groups: lists of floating-point tensors; a group may be empty.

    Returns:
        A float64 CPU tensor of shape ``(len(groups),)``.
    """
    sums = [squared_norms_reference(group).sum() for group in groups]
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)
