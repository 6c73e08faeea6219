"""Sums of squares over many tensors in plain torch: the CPU path.

Tensors are bucketed by dtype and shape. Equal-shape small tensors are stacked
a few at a time and reduced as the rows of one matrix; the other small tensors
of a dtype go through one ``torch._foreach_norm`` call. A large tensor's flat
memory is viewed as rows of ``ROW`` elements (plus a ragged tail), one norm per
row in one call, and the rows' squares are added in float64: one reduction over
millions of float32 values accumulates rounding error that short rows summed in
float64 do not (the tests bound the error). Float16, bfloat16 and float32
values are accumulated in float32, float64 values in float64.

Stacked matrices stay below torch's parallel grain (``STACK_ELEMENTS``), so
each is reduced by one thread: splitting small reductions across threads costs
more than it saves, most on a machine whose cores are busy.
``bench/test_norms.py`` measures this path against ``torch._foreach_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._utils import TensorIndex, accumulator_dtype, flat_span, index_tensors, is_dense

#: Length, in elements, of the rows a large tensor is reduced in.
ROW = 1 << 12
#: Tensors with more elements than this are reduced as rows.
LARGE = 1 << 17
#: Most elements stacked into one matrix (torch's grain size for parallel loops).
STACK_ELEMENTS = 32768
#: Fewest equal-shape tensors worth stacking.
MIN_STACK = 8


def _stacked_norms(tensors: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Norms (dtype ``acc``) of small tensors of one dtype and shape, as matrix rows."""
    rows = torch.stack(tensors).reshape(len(tensors), -1)
    return torch.linalg.vector_norm(rows, dim=1, dtype=None if rows.dtype == acc else acc)


def _foreach_sum_squares(tensors: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Float64 sums of squares of tensors of one dtype, in one ``_foreach_norm`` call."""
    dtype = None if tensors[0].dtype == acc else acc
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)).double().square()


def _rows_sum_squares(tensor: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Float64 sum of squares of a large tensor, reduced as ``ROW``-element rows.

    Dense layouts (channels_last included) are read as their flat memory, other
    tensors through a contiguous copy.
    """
    flat = flat_span(tensor) if is_dense(tensor) else tensor.reshape(-1)
    dtype = None if flat.dtype == acc else acc
    whole = flat.numel() // ROW * ROW
    rows = torch.linalg.vector_norm(flat[:whole].view(-1, ROW), dim=1, dtype=dtype)
    total = rows.double().square().sum()
    if whole < flat.numel():
        tail = torch.linalg.vector_norm(flat[whole:], dtype=dtype)
        total = total + tail.double().square()
    return total


def per_tensor_sum_squares(
    tensors: Sequence[torch.Tensor], index: TensorIndex | None = None
) -> torch.Tensor:
    """Float64 sum of squares of each tensor.

    Arguments:
        tensors: floating-point tensors on one device, any layout and dtype mix.
        index: :func:`esper.kernels._utils.index_tensors` of ``tensors``, if at hand.

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
    for dtype, positions in small.items():
        sums.append(_foreach_sum_squares([tensors[i] for i in positions], accumulator_dtype(dtype)))
        positions_done.extend(positions)
    big = [i for positions in large.values() for i in positions]
    if big:
        sums.append(torch.stack([_rows_sum_squares(tensors[i], accumulator_dtype(tensors[i].dtype))
                                 for i in big]))
        positions_done.extend(big)

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
        index: :func:`esper.kernels._utils.index_tensors` of ``tensors``, if at hand.

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
