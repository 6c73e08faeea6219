"""A cheap fingerprint of a seed's weights, to tell whether they moved (see
:mod:`esper.core.movement`).

Per parameter, the float64 sum and sum of squares of its values, all stacked into one
device tensor: no host sync per parameter, one ``.tolist()`` for the whole seed. A
change that keeps every parameter's sum and sum of squares (a permutation of its
values) is not seen; an optimizer step that reaches the parameter always is, even a
one-ulp change of one float32 element.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor


def fingerprint(parameters: Iterable[Tensor]) -> str | None:
    """A digest of ``parameters``' values (``None`` when there are none); one host sync.

    Equal digests: no parameter moved. Shapes are part of it, so a replaced parameter
    of another shape counts as moved.
    """
    params = [p.detach() for p in parameters]
    if not params:
        return None
    with torch.no_grad():
        sums = torch.stack([torch.stack((d.sum(), (d * d).sum()))
                            for d in (p.to(torch.float64) for p in params)])
    shapes = [tuple(p.shape) for p in params]
    text = repr((shapes, sums.tolist()))  # floats repr exactly; nan and inf too
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["fingerprint"]
