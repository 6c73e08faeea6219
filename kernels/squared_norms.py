"""Triton kernels for sums of squares over many tensors, and their host launcher.

Two stages, no atomics, so repeated calls agree bit for bit:

1. ``_partial_sums_kernel``, one launch per dtype: each program reduces one
   chunk of one tensor and writes its sum (float64) to its own slot of a
   partial-sum buffer. Every tensor of the launch is addressed as
   ``base + element_offset`` (offsets from ``data_ptr()`` differences), which
   also runs under ``TRITON_INTERPRET=1``, where a table of raw pointers would not.
2. ``_group_sums_kernel``, one launch: program ``g`` adds the consecutive slots
   of group ``g`` in a fixed order and writes one float32 value.

Within a chunk, float16, bfloat16 and float32 values are squared and summed in
float32, float64 values in float64; partial sums are added in float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._utils import Plan, TensorIndex, is_dense, num_warps_for, plan_launches

_ACCUMULATOR = {torch.float64: tl.float64}


@triton.jit
def _partial_sums_kernel(
    base_ptr,
    begin_ptr,
    end_ptr,
    slot_ptr,
    partials_ptr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    # Program pid squares and adds elements begin .. min(begin + CHUNK, end) of
    # base_ptr (element offsets; end is where its tensor ends) and writes the
    # sum to partials[slot].
    pid = tl.program_id(0)
    begin = tl.load(begin_ptr + pid)
    end = tl.load(end_ptr + pid)
    slot = tl.load(slot_ptr + pid)
    stop = tl.minimum(end - begin, CHUNK)
    acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for step in range(0, stop, BLOCK):
        idx = begin + step + tl.arange(0, BLOCK)
        x = tl.load(base_ptr + idx, mask=idx < end, other=0.0).to(ACC_DTYPE)
        acc += x * x
    tl.store(partials_ptr + slot, tl.sum(acc, axis=0).to(tl.float64))


@triton.jit
def _group_sums_kernel(partials_ptr, bounds_ptr, out_ptr, BLOCK: tl.constexpr):
    # Program g adds partials[bounds[g] : bounds[g + 1]] in a fixed order.
    group = tl.program_id(0)
    lo = tl.load(bounds_ptr + group)
    hi = tl.load(bounds_ptr + group + 1)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(lo, hi, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        acc += tl.load(partials_ptr + idx, mask=idx < hi, other=0.0)
    tl.store(out_ptr + group, tl.sum(acc, axis=0).to(tl.float32))


def interpreter_active() -> bool:
    """Whether these kernels were built for the Triton interpreter.

    That is decided when Triton is first imported: set ``TRITON_INTERPRET=1``
    before then to run them on CPU tensors.
    """
    return not isinstance(_partial_sums_kernel, triton.runtime.JITFunction)


def group_squared_norms_triton(
    tensors: Sequence[torch.Tensor],
    group_sizes: Sequence[int],
    *,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
    index: TensorIndex | None = None,
) -> torch.Tensor:
    """Sum of squares of each group of tensors, with the Triton kernels.

    Dense tensors of any layout (channels_last, permuted) are read in place;
    other strided tensors are first copied to contiguous memory.

    Arguments:
        tensors: floating-point tensors on one device (CUDA, or CPU under the
            interpreter), the groups concatenated in order.
        group_sizes: the number of tensors in each group; sums to ``len(tensors)``.
        out: optional float32 buffer of shape ``(len(group_sizes),)`` to write.
        workspace: optional float64 buffer for the partial sums, at least one
            element per program (tests pass it filled with NaN).
        index: :func:`esper.kernels._utils.index_tensors` of ``tensors``, if at hand.

    Returns:
        ``out``, holding one float32 sum of squares per group (0 for a group that
        is empty or holds only zero-size tensors).
    """
    if sum(group_sizes) != len(tensors):
        raise ValueError("group_sizes must add up to the number of tensors")
    device = tensors[0].device if tensors else torch.device("cpu")
    tensors = [t if is_dense(t) else t.contiguous() for t in tensors]
    plan = plan_launches(tensors, group_sizes, index)

    num_groups = len(group_sizes)
    if out is None:
        out = torch.empty(num_groups, dtype=torch.float32, device=device)
    if workspace is None:
        workspace = torch.empty(max(plan.num_slots, 1), dtype=torch.float64, device=device)
    if out.shape != (num_groups,) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 of shape ({num_groups},)")
    if workspace.numel() < plan.num_slots or workspace.dtype != torch.float64:
        raise ValueError(f"workspace must be float64 with at least {plan.num_slots} elements")
    if num_groups == 0:
        return out

    _run_kernels(plan, workspace, out, device)
    return out


def _run_kernels(plan: Plan, workspace: torch.Tensor, out: torch.Tensor,
                 device: torch.device) -> None:
    """Launch the partial sums of ``plan`` into ``workspace``, then the group sums into ``out``."""
    num_groups = out.shape[0]
    # One host-to-device copy for every table of every launch.
    meta = torch.cat((plan.table.reshape(-1), plan.bounds)).to(device, non_blocking=True)
    blocks = plan.table.shape[1]
    begin, end, slot = meta[:blocks], meta[blocks : 2 * blocks], meta[2 * blocks : 3 * blocks]
    bounds = meta[3 * blocks :]

    # Triton launches on the current CUDA device: make it the tensors' one.
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        for launch in plan.launches:
            rows = slice(launch.first, launch.first + launch.count)
            _partial_sums_kernel[(launch.count,)](
                launch.base,
                begin[rows],
                end[rows],
                slot[rows],
                workspace,
                CHUNK=launch.chunk,
                BLOCK=launch.block,
                ACC_DTYPE=_ACCUMULATOR.get(launch.base.dtype, tl.float32),
                num_warps=num_warps_for(launch.block),
            )
        block = min(1024, max(16, triton.next_power_of_2(plan.widest_group)))
        _group_sums_kernel[(num_groups,)](workspace, bounds, out, BLOCK=block)
