"""Sums of squares over many tensors in plain torch: the CPU path.

Tensors are bucketed by dtype and shape. Equal-shape small tensors are stacked
a few at a time and reduced as the rows of one matrix; all other tensors of a
dtype go through one ``torch._foreach_norm`` call, a large tensor as
``PIECE``-element pieces of its flat memory whose squares are added in
float64. One ``vector_norm`` over 4M float32 values loses about 2e-4 relative;
128K-element pieces about 1e-6, for 5-10% more time on this CPU (64K-element
pieces: 4e-7, 20% more). Float16, bfloat16 and float32 values are accumulated
in float32, float64 values in float64.

Stacked matrices stay below torch's parallel grain: on a busy two-core machine
multi-threaded row reductions ran up to 3x slower than ``_foreach_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._utils import TensorIndex, accumulator_dtype, flat_span, index_tensors, is_dense

#: Length, in elements, of the pieces a large tensor is reduced in.
PIECE = 1 << 17
#: Tensors with more elements than this are reduced in pieces.
LARGE = PIECE
#: Most elements stacked into one matrix (torch's grain size for parallel loops).
STACK_ELEMENTS = 32768
#: Fewest equal-shape tensors worth stacking.
MIN_STACK = 8


def _stacked_norms(tensors: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Norms (dtype ``acc``) of small tensors of one dtype and shape, as matrix rows."""
    rows = torch.stack(tensors).reshape(len(tensors), -1)
    return torch.linalg.vector_norm(rows, dim=1, dtype=None if rows.dtype == acc else acc)


def _foreach_sum_squares(
    small: list[torch.Tensor], large: list[torch.Tensor], acc: torch.dtype
) -> torch.Tensor:
    """Float64 sums of squares of ``small + large`` (one dtype), one ``_foreach_norm`` call.

    Each large tensor enters the call as ``PIECE``-element pieces of its flat
    memory (of a contiguous copy if it is not dense); their squares are added
    in float64.
    """
    pieces = list(small)
    spans = []
    for t in large:
        flat = flat_span(t) if is_dense(t) else t.reshape(-1)
        cut = flat.split(PIECE)
        spans.append((len(pieces), len(cut)))
        pieces.extend(cut)
    dtype = None if pieces[0].dtype == acc else acc
    squares = torch.stack(torch._foreach_norm(pieces, 2, dtype=dtype)).double().square()
    if not large:
        return squares
    totals = [squares[start : start + count].sum() for start, count in spans]
    return torch.cat((squares[: len(small)], torch.stack(totals)))


def per_tensor_sum_squares(
    tensors: Sequence[torch.Tensor], index: TensorIndex | None = None
) -> torch.Tensor:
    """Float64 sum of squares of each tensor.

    Arguments:
        tensors: floating-point tensors on one device, any layout and dtype mix.
        index: :func:`kernels._utils.index_tensors` of ``tensors``, if at hand.

    Returns:
        A float64 tensor of shape ``(len(tensors),)``.
    """
    index = index_tensors(tensors) if index is None else index
    positions_done: list[int] = []
    norms: list[torch.Tensor] = []  # of the stacked tensors, in positions_done order
    small: dict[torch.dtype, list[int]] = {}
    large: dict[torch.dtype, list[int]] = {}
    for (dtype, _, shape), positions in index.items():
        numel = math.prod(shape)
        per_stack = STACK_ELEMENTS // max(numel, 1)
        if numel and min(per_stack, len(positions)) >= MIN_STACK:
            acc = accumulator_dtype(dtype)
            for start in range(0, len(positions), per_stack):
                chunk = positions[start : start + per_stack]
                norms.append(_stacked_norms([tensors[i] for i in chunk], acc))
                positions_done.extend(chunk)
        else:
            (large if numel > LARGE else small).setdefault(dtype, []).extend(positions)
    sums = [torch.cat(norms).double().square()] if norms else []
    for dtype in small.keys() | large.keys():
        little, big = sorted(small.get(dtype, [])), sorted(large.get(dtype, []))
        sums.append(
            _foreach_sum_squares(
                [tensors[i] for i in little], [tensors[i] for i in big], accumulator_dtype(dtype)
            )
        )
        positions_done.extend(little + big)

    values = sums[0] if len(sums) == 1 else torch.cat(sums)
    if positions_done == list(range(len(tensors))):
        return values
    device = tensors[0].device
    result = torch.empty(len(tensors), dtype=torch.float64, device=device)
    return result.index_copy_(0, torch.tensor(positions_done, device=device), values)


def group_squared_norms_torch(
    tensors: Sequence[torch.Tensor],
    group_sizes: Sequence[int],
    index: TensorIndex | None = None,
) -> torch.Tensor:
    """Sum of squares of each group of tensors, in plain torch.

    Arguments:
        tensors: floating-point tensors on one device, the groups concatenated.
        group_sizes: the number of tensors in each group; sums to ``len(tensors)``.
        index: :func:`kernels._utils.index_tensors` of ``tensors``, if at hand.

    Returns:
        A float32 tensor of shape ``(len(group_sizes),)`` on the tensors' device.
    """
    if sum(group_sizes) != len(tensors):
        raise ValueError("group_sizes must add up to the number of tensors")
    if not tensors:
        return torch.zeros(len(group_sizes), dtype=torch.float32)
    per_tensor = per_tensor_sum_squares(tensors, index)
    if all(size == 1 for size in group_sizes):
        return per_tensor.float()
    # Scatter into a zero-padded (groups, widest group) matrix and add its rows:
    # every slot is written once, so this is deterministic on every device
    # (``index_add_`` uses atomics on CUDA).
    width = max(group_sizes)
    where = [g * width + j for g, size in enumerate(group_sizes) for j in range(size)]
    padded = torch.zeros(len(group_sizes) * width, dtype=torch.float64, device=per_tensor.device)
    padded.index_copy_(0, torch.tensor(where, device=per_tensor.device), per_tensor)
    return padded.view(len(group_sizes), width).sum(dim=1).float()
