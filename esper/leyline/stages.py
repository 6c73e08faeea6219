"""Seed lifecycle stages and the transition table.

The table is the single source of truth for which stage may follow which; the
lifecycle functions in :mod:`esper.core.lifecycle` consult it and never
hard-code a stage matrix of their own.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType
from typing import Final

from ..validation import is_int


class SeedStage(IntEnum):
    """Where a slot's seed is in its life.

    ``PROBATIONARY`` and ``CULLED`` are the older revision's names for
    ``HOLDING`` and ``PRUNED`` and are accepted as aliases.
    """

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    HOLDING = 5
    FOSSILIZED = 6
    PRUNED = 7
    EMBARGOED = 8
    RESETTING = 9
    PROBATIONARY = 5
    CULLED = 7

    @classmethod
    def parse(cls, name: str | int | SeedStage) -> SeedStage:
        """Return the stage for a name (any case, aliases included) or a value.

        Raises:
            ValueError: if ``name`` names no stage.
        """
        if isinstance(name, SeedStage):
            return name
        if is_int(name):
            try:
                return cls(name)
            except ValueError:
                pass
        elif isinstance(name, str) and name.upper() in cls.__members__:
            return cls.__members__[name.upper()]
        known = ", ".join(cls.__members__)
        raise ValueError(f"unknown seed stage {name!r}; known stages: {known}")


_S = SeedStage

VALID_TRANSITIONS: Final[MappingProxyType[SeedStage, frozenset[SeedStage]]] = MappingProxyType(
    {
        _S.UNKNOWN: frozenset({_S.DORMANT}),
        _S.DORMANT: frozenset({_S.GERMINATED}),
        _S.GERMINATED: frozenset({_S.TRAINING, _S.PRUNED}),
        _S.TRAINING: frozenset({_S.BLENDING, _S.PRUNED}),
        _S.BLENDING: frozenset({_S.HOLDING, _S.PRUNED}),
        _S.HOLDING: frozenset({_S.FOSSILIZED, _S.PRUNED}),
        _S.FOSSILIZED: frozenset(),
        _S.PRUNED: frozenset({_S.EMBARGOED}),
        _S.EMBARGOED: frozenset({_S.RESETTING}),
        _S.RESETTING: frozenset({_S.DORMANT}),
    }
)

# The one family of stage predicates: every package asks these instead of keeping a set.
_LIVE: Final = frozenset({_S.GERMINATED, _S.TRAINING, _S.BLENDING, _S.HOLDING})
_ACTIVE: Final = _LIVE | {_S.FOSSILIZED}
_BLENDED: Final = frozenset({_S.BLENDING, _S.HOLDING, _S.FOSSILIZED})
_FAILURE: Final = frozenset({_S.PRUNED, _S.EMBARGOED, _S.RESETTING})


def is_valid_transition(source: SeedStage, target: SeedStage) -> bool:
    """Whether ``target`` may directly follow ``source``."""
    return target in VALID_TRANSITIONS.get(source, frozenset())


def is_terminal(stage: SeedStage) -> bool:
    """Whether no stage may follow ``stage`` (only FOSSILIZED)."""
    return not VALID_TRANSITIONS[stage]


def is_live(stage: SeedStage) -> bool:
    """Whether the slot's seed is still on trial in ``stage`` (germinated to HOLDING): it
    may be pruned, and it may not be replaced."""
    return stage in _LIVE


def is_active(stage: SeedStage) -> bool:
    """Whether the slot holds a seed module in ``stage``: a live one or a fossil."""
    return stage in _ACTIVE


def is_blended(stage: SeedStage) -> bool:
    """Whether the seed's output is part of the model's in ``stage`` (alpha may be > 0)."""
    return stage in _BLENDED


def is_failure(stage: SeedStage) -> bool:
    """Whether ``stage`` is on the path back from a pruned seed."""
    return stage in _FAILURE

