"""Which :class:`~esper.core.state.SlotState` a seed slot accepts in place of its own.

``slot.state = new`` (and every lifecycle call, which commits the state the
pure lifecycle returns) goes through :func:`check_assignable`: a state must be
of the same slot, agree with whether the slot holds a seed and which
blueprint it is, and carry no alpha override (overrides are scoped:
``force_alpha`` or ``forward(alpha=...)``).
"""

from __future__ import annotations

from ..core.state import SlotState


def check_assignable(new: object, current: SlotState, holds_seed: bool) -> SlotState:
    """``new``, if a slot in ``current`` state (holding a seed or not) may take it.

    Raises:
        TypeError: ``new`` is not a :class:`SlotState`.
        ValueError: another slot's state, a seed the slot does not hold (or the
            other way round), another blueprint, or an alpha override.
    """
    if not isinstance(new, SlotState):
        raise TypeError(f"SeedSlot.state takes a SlotState, got {type(new).__name__}")
    if (new.slot_id, new.channels) != (current.slot_id, current.channels):
        raise ValueError(f"state of slot {new.slot_id!r} ({new.channels} channels) cannot be "
                         f"assigned to slot {current.slot_id!r} ({current.channels} channels)")
    if new.has_seed != holds_seed:
        held = "holds a seed" if holds_seed else "holds no seed"
        raise ValueError(f"slot {current.slot_id!r} {held}; a {new.stage.name} state does not "
                         "fit it (seeds change through germinate and prune)")
    if new.has_seed and current.has_seed and new.blueprint_id != current.blueprint_id:
        raise ValueError(f"state names blueprint {new.blueprint_id!r} but the slot's seed is "
                         f"{current.blueprint_id!r}")
    if new.alpha_overridden:
        raise ValueError("an alpha override is applied with force_alpha or forward(alpha=...)")
    return new
