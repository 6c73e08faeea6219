"""Small host-side helpers shared by the kernel launchers.

Nothing here launches a kernel: these functions choose block sizes, read the
memory layout of tensors and build the int64 tables a multi-tensor launch reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

#: Widest vector of elements one Triton program reads per loop step.
MAX_BLOCK = 1024
#: Narrowest vector (keeps one-element tensors from costing a full block).
MIN_BLOCK = 128
#: Most loop steps one program takes before the tensor is split into more programs.
MAX_STEPS = 16


def next_power_of_2(n: int) -> int:
    """Smallest power of two that is at least ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which sums of squares of ``dtype`` values are accumulated.

    Arguments:
        dtype: a floating-point element dtype.

    Returns:
        ``torch.float64`` for ``float64`` input, ``torch.float32`` for every
        narrower floating type (``float32``, ``float16``, ``bfloat16``, ...).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers exactly ``t.numel()`` consecutive elements of memory.

    True for contiguous and channels_last tensors and for any permutation of a
    contiguous tensor (non-overlapping and dense); false for slices with gaps
    and for expanded (stride 0) tensors.

    Arguments:
        t: any tensor.

    Returns:
        True if the elements of ``t`` are ``numel`` consecutive slots starting at
        ``t.data_ptr()``, in some order.
    """
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return True
    expected = 1
    for stride, size in sorted(
        (st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1
    ):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_span(t: torch.Tensor) -> torch.Tensor:
    """1-D view of the memory a dense tensor covers, in storage order.

    Sums of squares do not depend on element order, so a channels_last or
    transposed tensor can be reduced as this flat view without a copy.

    Arguments:
        t: a tensor for which :func:`is_dense` is true.

    Returns:
        A view of shape ``(t.numel(),)`` and stride ``(1,)`` over the same memory.
    """
    return t.as_strided((t.numel(),), (1,))


def choose_block(max_numel: int) -> tuple[int, int]:
    """Vector width and chunk length for one multi-tensor launch.

    Each program reduces one chunk of one tensor, ``BLOCK`` elements per loop
    step; a tensor longer than a chunk is split over several programs.

    Arguments:
        max_numel: the largest element count among the tensors of the launch.

    Returns:
        ``(block, chunk)``: powers of two with ``MIN_BLOCK <= block <= MAX_BLOCK``
        and ``block <= chunk <= block * MAX_STEPS``.
    """
    block = min(MAX_BLOCK, max(MIN_BLOCK, next_power_of_2(max_numel)))
    # About 128 programs per tensor before a chunk grows past one step.
    steps = min(MAX_STEPS, next_power_of_2(max(1, max_numel // (block * 128))))
    return block, block * steps


def num_warps_for(block: int) -> int:
    """Warps for a program reducing ``block`` elements per step (1 to 8)."""
    return max(1, min(8, block // 256))


def group_index(group_sizes: Sequence[int]) -> list[int]:
    """Group number of each tensor of the flattened groups.

    Arguments:
        group_sizes: the number of tensors in each group, in order.

    Returns:
        A list with ``sum(group_sizes)`` entries: ``[0] * group_sizes[0] + [1] * ...``.
    """
    return [g for g, size in enumerate(group_sizes) for _ in range(size)]


#: Tensors bucketed by what they share: ``(dtype, device, shape) -> [positions]``.
TensorIndex = dict[tuple[torch.dtype, torch.device, torch.Size], list[int]]


def index_tensors(tensors: Sequence[torch.Tensor]) -> TensorIndex:
    """Bucket tensors by dtype, device and shape, in one pass.

    The keys answer the input checks (which dtypes, which devices) and the
    buckets are what the torch path reduces together.

    Arguments:
        tensors: torch tensors.

    Returns:
        A dict from ``(dtype, device, shape)`` to the positions of the tensors
        with that key, in order.
    """
    index: TensorIndex = {}
    for i, t in enumerate(tensors):
        index.setdefault((t.dtype, t.device, t.shape), []).append(i)
    return index


@dataclass(frozen=True)
class Launch:
    """One launch of the partial-sum kernel: tensors of one dtype and alignment.

    Attributes:
        base: the member tensor with the lowest address; the kernel's pointer.
        block: elements per loop step.
        chunk: elements per program.
        first: index of this launch's first row in the block table.
        count: number of programs (rows of the block table).
    """

    base: torch.Tensor
    block: int
    chunk: int
    first: int
    count: int


@dataclass(frozen=True)
class Plan:
    """Everything the two-stage reduction needs, built on the host.

    Attributes:
        launches: one entry per launch of the partial-sum kernel.
        table: int64, shape ``(3, num_blocks)``: per program, the element offset
            from its launch's base where its chunk starts, the offset where its
            tensor ends, and the partial-sum slot it writes.
        bounds: int64, shape ``(num_groups + 1,)``: group ``g`` owns the slots
            ``bounds[g]:bounds[g + 1]`` (possibly none).
        num_slots: total number of partial sums.
        widest_group: the most slots any one group owns.
    """

    launches: list[Launch]
    table: torch.Tensor
    bounds: torch.Tensor
    num_slots: int
    widest_group: int


def plan_launches(
    tensors: Sequence[torch.Tensor],
    group_sizes: Sequence[int],
    index: TensorIndex | None = None,
) -> Plan:
    """Group dense tensors into launches and lay out their partial sums.

    Non-empty tensors sharing a dtype and an address residue modulo the element
    size (one residue for tensors allocated by torch) form one launch, addressed
    as ``base + element_offset`` with the lowest address as base so every offset
    is non-negative. Partial-sum slots are numbered in tensor order, so the
    slots of each group are consecutive whatever launch wrote them. The
    arithmetic runs on int64 CPU tensors, not in a Python loop per block (a
    large model has thousands of blocks).

    Arguments:
        tensors: dense tensors (see :func:`is_dense`), groups concatenated in order.
        group_sizes: the number of tensors in each group; sums to ``len(tensors)``.
        index: :func:`index_tensors` of ``tensors``, if at hand.

    Returns:
        A :class:`Plan` whose tables live on the CPU.
    """
    index = index_tensors(tensors) if index is None else index
    ptr = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
    members, nblk = _group_launches(ptr, index)
    ends = torch.cumsum(nblk, 0)
    starts = ends - nblk
    launches, rows, first = [], [], 0
    for member in members:
        launch, row = _lay_out(tensors, ptr, nblk, starts, member, first)
        launches.append(launch)
        rows.append(row)
        first += launch.count
    table = torch.cat(rows, dim=1) if rows else torch.zeros(3, 0, dtype=torch.int64)
    edges = torch.tensor([0, *accumulate(group_sizes)], dtype=torch.int64)
    bounds = torch.cat((torch.zeros(1, dtype=torch.int64), ends))[edges]
    widest = int((bounds[1:] - bounds[:-1]).max()) if len(group_sizes) else 0
    return Plan(launches, table, bounds, first, widest)


# The tensors of one launch: positions, element counts, element size, block and chunk.
_Member = tuple[torch.Tensor, torch.Tensor, int, int, int]


def _group_launches(ptr: torch.Tensor, index: TensorIndex) -> tuple[list[_Member], torch.Tensor]:
    """The launches (non-empty tensors by dtype and address residue) and each tensor's
    block count (0 for an empty one)."""
    by_dtype: dict[torch.dtype, tuple[list[int], list[int]]] = {}
    for (dtype, _, shape), positions in index.items():
        numel = math.prod(shape)
        if numel:
            pos, num = by_dtype.setdefault(dtype, ([], []))
            pos.extend(positions)
            num.extend([numel] * len(positions))
    members: list[_Member] = []
    nblk = torch.zeros(len(ptr), dtype=torch.int64)
    for dtype, (pos, num) in by_dtype.items():
        where, numel = torch.tensor(pos), torch.tensor(num)
        residue = ptr[where] % dtype.itemsize
        for r in residue.unique().tolist():
            keep = residue == r
            part, part_numel = where[keep], numel[keep]
            block, chunk = choose_block(int(part_numel.max()))
            nblk[part] = (part_numel + chunk - 1) // chunk
            members.append((part, part_numel, dtype.itemsize, block, chunk))
    return members, nblk


def _lay_out(tensors: Sequence[torch.Tensor], ptr: torch.Tensor, nblk: torch.Tensor,
             starts: torch.Tensor, member: _Member, first: int) -> tuple[Launch, torch.Tensor]:
    """One launch, its programs numbered from ``first``, and its rows of the block table."""
    part, numel, size, block, chunk = member
    addr = ptr[part]
    lowest = int(torch.argmin(addr))
    delta = addr - addr[lowest]
    assert bool((delta % size == 0).all()), "tensors of one launch must share alignment"
    off = delta // size
    count = nblk[part]
    owner = torch.repeat_interleave(torch.arange(part.numel()), count)
    local = torch.arange(owner.numel()) - (torch.cumsum(count, 0) - count)[owner]
    rows = torch.stack(
        (off[owner] + local * chunk, (off + numel)[owner], starts[part][owner] + local)
    )
    return Launch(tensors[int(part[lowest])], block, chunk, first, owner.numel()), rows
