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
the culprit (see :meth:`esper.tolaria.trainer.Trainer.train_epoch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import FrameType

from torch import nn

from ..errors import SeedShapeError
from ..nn.slot import SeedSlot


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


__all__ = ["seed_culprit", "seed_modules"]
