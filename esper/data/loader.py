"""Batching and per-rank sharding of ``(x, y)`` tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..validation import check_int
from .errors import DatasetError


def _check_pair(x: Tensor, y: Tensor) -> int:
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"x and y must hold the same number of examples, "
                           f"got {x.shape[0]} and {y.shape[0]}")
    return x.shape[0]


def batches(x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate over ``(x, y)`` in mini-batches, each example once.

    Arguments:
        x: inputs, examples along dimension 0.
        y: targets, as many as ``x``.
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: visit the examples in a random order drawn from ``generator``.
        generator: required when shuffling; the same generator state gives the same order.
        drop_last: skip a final batch smaller than ``batch_size``.

    Returns:
        An iterator of ``(x_batch, y_batch)`` pairs.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> for xb, yb in batches(*task.train, 64, shuffle=True, generator=g): ...
    """
    count = _check_pair(x, y)
    check_int("batch_size", batch_size, minimum=1, error=DatasetError)
    if shuffle and generator is None:
        raise DatasetError("batches: shuffle=True needs a torch.Generator for a "
                           "reproducible order")
    # Drawn on the CPU (the generator's device, so the order is the same on every device).
    order = torch.randperm(count, generator=generator).to(x.device) if shuffle else None
    return _iterate(x, y, batch_size, order, drop_last)


def _iterate(x: Tensor, y: Tensor, batch_size: int, order: Tensor | None,
             drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
    count = x.shape[0]
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            yield x[index], y[index]


def shard(x: Tensor, y: Tensor, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
    """Take one rank's slice of ``(x, y)`` for data-parallel training.

    Rank ``r`` gets examples ``r, r + world_size, r + 2 * world_size, ...``; the
    ``len(x) % world_size`` examples at the end are dropped so that every rank gets the
    same number and the slices are disjoint.

    Arguments:
        x: inputs, examples along dimension 0.
        y: targets, as many as ``x``.
        rank: this process's rank, in ``[0, world_size)``.
        world_size: the number of ranks.

    Returns:
        ``(x_shard, y_shard)`` with ``len(x) // world_size`` examples each.
    """
    count = _check_pair(x, y)
    check_int("world_size", world_size, minimum=1, error=DatasetError)
    check_int("rank", rank, minimum=0, maximum=world_size - 1, error=DatasetError)
    per_rank = count // world_size
    if per_rank == 0:
        raise DatasetError(f"cannot shard {count} examples over {world_size} ranks")
    stop = per_rank * world_size
    return x[rank:stop:world_size], y[rank:stop:world_size]
