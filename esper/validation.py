"""The argument checks every layer shares: one rule each, raising the caller's exception.

A ``bool`` is an ``int`` to Python but never a count or a number to Esper
(``epochs=True`` is a mistake, not one epoch), so every check here refuses it.
The checks that raise take the exception class of their call site (a
``ValueError`` by default, a ``DatasetError`` in the data loaders, a
``CheckpointError`` where a file is read) and word the message the same way
everywhere: ``"<name> must be an int >= 1, got 0"``.

This module imports nothing from Esper or torch, so any layer may use it.
"""

from __future__ import annotations

import math
from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an ``int`` or a ``float`` and not a ``bool`` (NaN included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_real(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a real number (:func:`is_real`) that is finite as a ``float``.

    An ``int`` too large for a ``float`` (``10**400``) is not.
    """
    if not is_real(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_int(name: str, value: object, *, minimum: int = 0, maximum: int | None = None,
              error: type[Exception] = ValueError,
              type_error: type[Exception] | None = None) -> int:
    """``value`` itself if it is an int (not a bool) in ``[minimum, maximum]``, else raise.

    Arguments:
        name: what ``value`` is, as the message names it (``"TaskConfig.max_epochs"``).
        value: the value to check.
        minimum: the smallest value allowed.
        maximum: the largest value allowed (``None``: no bound).
        error: raised for a value out of range, and for one that is not an int
            unless ``type_error`` is given: ``"<name> must be an int >= <minimum>,
            got <value!r>"`` (``"an int in [<minimum>, <maximum>]"`` with a maximum).
        type_error: if given, raised instead for a value that is not an int:
            ``"<name> must be an int, got <value!r>"``.

    Returns:
        ``value``, typed as an ``int``.
    """
    if type_error is not None and not is_int(value):
        raise type_error(f"{name} must be an int, got {value!r}")
    if is_int(value) and value >= minimum and (maximum is None or value <= maximum):
        return value
    rule = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise error(f"{name} must be an int {rule}, got {value!r}")


def check_finite(name: str, value: object, *, minimum: float = 0.0, strict: bool = False,
                 error: type[Exception] = ValueError) -> float:
    """``value`` as a ``float`` if it is a finite real number at least ``minimum``, else raise.

    Arguments:
        name: what ``value`` is, as the message names it (``"freshness_s"``).
        value: the value to check (a bool, NaN, an infinity or an int too large
            for a float is refused).
        minimum: the bound ``value`` must reach.
        strict: ``True`` when ``value`` must exceed ``minimum``, not merely reach it.
        error: raised with ``"<name> must be a finite number >= <minimum>, got
            <value!r>"`` (``>`` when ``strict``).

    Returns:
        ``float(value)``.
    """
    if is_finite_real(value):
        number = float(value)
        if number > minimum or (number == minimum and not strict):
            return number
    raise error(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, "
                f"got {value!r}")


__all__ = ["check_finite", "check_int", "is_finite_real", "is_int", "is_real"]
