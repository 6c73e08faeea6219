"""Learning-rate schedules: the multiplier of every group's rate at a step.

A pure function of the step: the trainer writes its value into the step's
``lr_scale`` tensor before each step, so the schedule never recompiles. A
linear warmup (from ``1 / (warmup + 1)`` up to 1) precedes either schedule;
``"cosine"`` then decays to 0 at the run's last step.

Example::

    >>> lr_factor("cosine", step=50, total=100)
    0.5
    >>> lr_factor("constant", step=0, total=100, warmup=4)
    0.2
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..leyline.constants import SCHEDULES
from ..validation import check_int


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The multiplier of the learning rates at ``step`` (0-based) of ``total`` steps.

    Raises:
        ValueError: an unknown schedule (the message lists the known ones), or a
            step, total or warmup out of range.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {list(SCHEDULES)}")
    check_int("total", total, minimum=1)
    check_int("step", step, minimum=0)
    check_int("warmup", warmup, minimum=0)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class RunSchedule:
    """A run's schedule: :func:`lr_factor` of each of its ``total`` steps.

    Raises:
        ValueError: as :func:`lr_factor` for an unknown schedule or bad counts.
    """

    name: str
    total: int
    warmup: int = 0

    def __post_init__(self) -> None:
        lr_factor(self.name, 0, self.total, self.warmup)  # one place for the rules

    def factor(self, step: int) -> float:
        """The multiplier of the learning rates at ``step`` (0-based)."""
        return lr_factor(self.name, step, self.total, self.warmup)
