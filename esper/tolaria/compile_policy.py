"""When the training step compiles: the run's ``--compile`` mode, its device and, for
``"auto"`` on a CPU, the pace of its first eager steps.

Compiling pays when the time it saves on the steps left exceeds the time it
costs. On CUDA a compiled step saves launch overhead on every step and the
compile runs on otherwise idle CPU cores: ``"auto"`` compiles. On a CPU the
compile competes with training for the same cores and costs 20-30 s per graph
cold (one graph per topology), while a small model's eager step is already
fast: the default ``esper grow`` on digits has about 5 s of eager steps in
all, so even one warm compile (6 s) costs more than it can save. ``"auto"`` on
a CPU therefore times a few eager steps (:class:`StepClock`) and compiles
only when the steps left would take at least
:data:`~esper.leyline.constants.AUTO_COMPILE_MIN_EAGER_SECONDS` eagerly
(:func:`choose_by_pace`); it then times a few compiled steps and goes back to
eager for good if they were not faster (:func:`slower_than_eager`: on this
CPU the CIFAR CNN's inductor step at one thread was slower than its eager
one). ``bench/test_time_to_result.py`` measures the
outcome; the README's performance section has the table.

Example::

    choice = choose_up_front("auto", torch.device("cpu"))  # None: time the steps first
    clock = StepClock()
    ...  # clock.add(seconds) after each eager step, until clock.ready
    choice = choose_by_pace(clock.pace, steps_left=600)  # CompileChoice(False, "auto: ...")
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from ..leyline.constants import AUTO_COMPILE_MIN_EAGER_SECONDS, AUTO_COMPILE_TIMED_STEPS


@dataclass(frozen=True, slots=True)
class CompileChoice:
    """Whether the training step compiles, and why, in words a person reads in the summary."""

    compile: bool
    reason: str


def choose_up_front(mode: str, device: torch.device) -> CompileChoice | None:
    """The choice that needs no measurement, or ``None`` (``"auto"`` on a CPU: time the
    eager steps with a :class:`StepClock`, then :func:`choose_by_pace`).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "always":
        return CompileChoice(True, "--compile always")
    if mode == "never":
        return CompileChoice(False, "--compile never")
    if mode != "auto":
        raise ValueError(f"unknown compile mode {mode!r}; known: ['auto', 'always', 'never']")
    if device.type != "cpu":
        return CompileChoice(True, f"auto: compiled on {device.type}")
    return None


def choose_by_pace(step_seconds: float, steps_left: int,
                   threshold: float = AUTO_COMPILE_MIN_EAGER_SECONDS) -> CompileChoice:
    """``"auto"``'s choice on a CPU: compile when the ``steps_left`` steps at
    ``step_seconds`` each would take at least ``threshold`` seconds eagerly."""
    projected = step_seconds * steps_left
    if projected >= threshold:
        return CompileChoice(True, f"auto: about {projected:.0f} s of eager steps left; "
                                   f"compiling pays past {threshold:.0f} s on a CPU")
    return CompileChoice(False, f"auto: eager, about {projected:.0f} s of steps left; "
                                f"compiling pays only past {threshold:.0f} s on a CPU "
                                "(--compile always to compile)")


def slower_than_eager(compiled_seconds: float, eager_seconds: float) -> CompileChoice:
    """``"auto"``'s second look: compiled steps that were not faster than the eager ones it
    timed send the run back to eager (the compile is spent; the steps need not be slower)."""
    return CompileChoice(False, f"auto: compiled steps took {compiled_seconds * 1e3:.2f} ms, "
                                f"eager {eager_seconds * 1e3:.2f} ms: back to eager")


@dataclass
class StepClock:
    """The pace of the eager steps: the first is not timed (allocations, lazy imports),
    the next :data:`~esper.leyline.constants.AUTO_COMPILE_TIMED_STEPS` are."""

    timed: int = AUTO_COMPILE_TIMED_STEPS
    seen: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        """Count one eager step that took ``seconds``."""
        if self.seen > 0 and not self.ready:
            self.seconds.append(seconds)
        self.seen += 1

    @property
    def ready(self) -> bool:
        """Whether enough steps were timed for :attr:`pace`."""
        return len(self.seconds) >= self.timed

    @property
    def pace(self) -> float:
        """The median seconds of the timed steps.

        Raises:
            ValueError: no step was timed yet.
        """
        if not self.seconds:
            raise ValueError("no eager step has been timed yet")
        return statistics.median(self.seconds)


__all__ = ["CompileChoice", "StepClock", "choose_by_pace", "choose_up_front",
           "slower_than_eager"]
