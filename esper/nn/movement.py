"""The slot's side of "did the seed train?": fingerprint its weights, say so when it did not.

The rule and the verdict are pure (:mod:`esper.core.movement`); the fingerprint is a
tensor reduction (:func:`esper.ops.movement.fingerprint`, one host sync). A slot takes
the baseline when its seed enters TRAINING and measures before each epoch step and G2
request while the seed has not yet been seen to move, so a moving seed costs one
fingerprint after its first TRAINING epoch and nothing after that.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import Tensor

from ..core import movement
from ..core.state import SlotState
from ..errors import UnboundSeedWarning
from ..ops.movement import fingerprint


def with_baseline(state: SlotState, parameters: Iterable[Tensor]) -> SlotState:
    """``state`` with its seed's weights fingerprinted, if it just entered TRAINING."""
    if not movement.needs_baseline(state):
        return state
    return movement.watch(state, fingerprint(parameters))


def measured(state: SlotState, parameters: Iterable[Tensor]) -> SlotState:
    """``state`` with ``weights_moved`` measured now, if that could change the verdict."""
    if not movement.needs_measurement(state):
        return state
    return movement.observe_movement(state, fingerprint(parameters))


def warn_if_frozen(before: SlotState, after: SlotState) -> None:
    """Warn (:class:`~esper.errors.UnboundSeedWarning`) where ``after`` first finds its
    seed frozen: once per seed, as the ``SEED_FROZEN`` event is given."""
    if movement.became_frozen(before, after):
        warnings.warn(f"{movement.frozen_message(after)}; {movement.FROZEN_HINT}",
                      UnboundSeedWarning, stacklevel=2)


__all__ = ["measured", "warn_if_frozen", "with_baseline"]
