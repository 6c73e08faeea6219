"""Which seed raised an exception: a seed is untrusted code.

A seed (or its blend gate) that raises must cost only itself: the caller
prunes it and carries on. :func:`seed_culprit` finds the slot whose seed
raised by walking the exception's traceback (and its causes) for a frame
whose ``self`` is the seed, its gate, or one of their submodules; an error
whose frames hold no seed is the host's or Esper's, and the caller re-raises
it. A seed that changes the feature shape is caught by the slot itself
(:class:`~esper.errors.SeedShapeError`) and is blamed on that slot.

Frames are only as good as the run that produced them: under
``torch.compile`` a raise inside the traced code surfaces as a dynamo error
without the seed's frames, so the trainer re-runs the step eagerly to find
the culprit (:func:`step_or_prune`). :func:`survive` runs any other work
(validation, the isolation probe) until no seed raises in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import TypeVar

from torch import nn

from ..errors import SeedShapeError, describe
from ..nn.slot import SeedSlot

T = TypeVar("T")
Prune = Callable[[str, BaseException], None]
"""Prunes the seed of the named slot for the error it raised (or re-raises the error)."""
_log = logging.getLogger("esper")


def seed_modules(slots: Mapping[str, SeedSlot]) -> dict[int, str]:
    """``id`` of every module of every seed and gate -> the name of its slot."""
    owners: dict[int, str] = {}
    for name, slot in slots.items():
        for part in (slot.seed, slot.gate):
            if isinstance(part, nn.Module):
                owners.update((id(module), name) for module in part.modules())
    return owners


def _frames(error: BaseException) -> Iterator[FrameType]:
    """Every frame of ``error``'s traceback and of its causes, innermost first per error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = []
        tb = current.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        yield from reversed(frames)
        current = current.__cause__ or current.__context__


def seed_culprit(error: BaseException, slots: Mapping[str, SeedSlot]) -> str | None:
    """The slot whose seed raised ``error``, or ``None`` if no seed did.

    Arguments:
        error: an exception caught around a forward, backward or step.
        slots: slot name -> slot (``model.seed_slots``).

    Returns:
        The name of the slot whose seed (or gate) has the innermost frame in
        the traceback; for a :class:`~esper.errors.SeedShapeError`, the slot
        that raised it; otherwise ``None``.
    """
    owners = seed_modules(slots)
    shape_error = isinstance(error, SeedShapeError)
    for frame in _frames(error):
        this = frame.f_locals.get("self")
        if this is None:
            continue
        if id(this) in owners:
            return owners[id(this)]
        if shape_error and isinstance(this, SeedSlot):
            return this.slot_id
    return None


def survive(work: Callable[[], T], slots: Mapping[str, SeedSlot], prune: Prune) -> tuple[T, bool]:
    """``work()``, pruning each seed that raises in it and trying again.

    Returns:
        What ``work`` returned and whether a seed was pruned on the way.

    Raises:
        Exception: what ``work`` raised when no seed raised it.
    """
    pruned = False
    while True:
        try:
            return work(), pruned
        except Exception as error:
            culprit = seed_culprit(error, slots)
            if culprit is None:
                raise
            prune(culprit, error)
            pruned = True


def step_or_prune(step: Callable[[], T], eager: Callable[[], T] | None,
                  slots: Mapping[str, SeedSlot], prune: Prune) -> T | None:
    """The ``step``, or ``None`` when a seed raised in it (that seed is then pruned).

    A seed that raises is untrusted code failing: nothing of that step is
    applied (the forward or backward raised before any update, and buffers
    are committed only at the end). Under ``torch.compile`` a raise inside
    the graph loses the seed's frames, so the ``eager`` version of a compiled
    step runs the same batch: if it passes there its update stands (the same
    function), if it raises again the seed is found from its frames.

    Raises:
        Exception: an error no seed raised.
    """
    try:
        return step()
    except Exception as error:
        culprit = seed_culprit(error, slots)
        if culprit is None and eager is not None:
            try:
                result = eager()
                _log.warning("the compiled step raised %s; that step ran eagerly",
                             describe(error))
                return result
            except Exception as eager_error:
                culprit, error = seed_culprit(eager_error, slots), eager_error
        if culprit is None:
            raise error
        prune(culprit, error)
        return None


__all__ = ["Prune", "seed_culprit", "seed_modules", "step_or_prune", "survive"]
