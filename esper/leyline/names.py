"""How a slot's name appears among a model's parameter names: one rule, read both ways.

A slot is named by the module path it is grafted after (``"layer3.0"``) or by
a built-in host's point name (``"mid"``). A module's child name cannot hold a
``"."``, so a slot is stored under its key, dots replaced by dashes, and its
parameters are named ``seed_slots.<key>.<...>``. A slot name never holds a
dash, so the rule reads back: :func:`slot_name` inverts :func:`slot_key`.
"""

from __future__ import annotations

from typing import Final

SLOT_PREFIX: Final = "seed_slots."
"""The prefix of every seed slot's parameters and buffers in a model."""


CANDIDATE_STACK: Final = "stack"
"""The child of a tournament's seed that holds the candidates' stacked parameters, each
``[K, ...]``: they are named ``seed_slots.<key>.seed.stack.<the seed's own name>``."""


def check_slot_name(name: str) -> str:
    """``name`` itself if it can name a slot (a non-empty string without a dash).

    Raises:
        ValueError: otherwise.
    """
    if not isinstance(name, str) or not name or "-" in name:
        raise ValueError(f"a slot name is a non-empty module path without '-', got {name!r}")
    return name


def slot_key(name: str) -> str:
    """The child-module key of slot ``name``: its dots become dashes."""
    return check_slot_name(name).replace(".", "-")


def slot_name(key: str) -> str:
    """The slot whose key is ``key`` (the inverse of :func:`slot_key`)."""
    return key.replace("-", ".")


def slot_of(parameter_name: str) -> str | None:
    """The slot a model parameter belongs to, or ``None`` for the host's."""
    if not parameter_name.startswith(SLOT_PREFIX):
        return None
    return slot_name(parameter_name[len(SLOT_PREFIX):].split(".", 1)[0])


def is_stacked(parameter_name: str) -> bool:
    """Whether a model parameter holds a tournament's K candidates along its first dimension."""
    parts = parameter_name.split(".")
    return (parameter_name.startswith(SLOT_PREFIX) and len(parts) > 4
            and parts[2:4] == ["seed", CANDIDATE_STACK])


def unstacked(parameter_name: str) -> str:
    """The name a stacked parameter takes in the tournament's winner (``.stack`` removed).

    Raises:
        ValueError: ``parameter_name`` is not a stacked parameter.
    """
    if not is_stacked(parameter_name):
        raise ValueError(f"{parameter_name!r} is not a tournament's stacked parameter")
    parts = parameter_name.split(".")
    return ".".join(parts[:3] + parts[4:])


__all__ = ["CANDIDATE_STACK", "SLOT_PREFIX", "check_slot_name", "is_stacked", "slot_key",
           "slot_name", "slot_of", "unstacked"]
