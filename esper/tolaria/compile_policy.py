"""When the training step compiles: the run's ``--compile`` mode and, for ``"auto"``, the
pace of its first eager steps.

Compiling pays when the time it saves on the steps left exceeds the time it
costs, and both depend on the model and the machine. Measured on this
repository's 2-core CPU (``python -m bench.compile_choice``): a cold compile
costs 27-30 s per graph, one graph per topology (about four in a default
run); it saves 66% of the digits CNN's step and 0-16% of the CIFAR CNN's. The
default ``esper grow`` on digits has about 5 s of eager steps in all, so even
one warm compile (6 s) costs more than it can save. ``"auto"`` therefore times
a few eager steps (:class:`StepClock`, on a :func:`device_clock` that waits
for the device) and compiles only when the steps left would take at least
:data:`~esper.leyline.constants.AUTO_COMPILE_MIN_EAGER_SECONDS` eagerly
(:func:`choose_by_pace`); it then times a few compiled steps and goes back to
eager for good if they were not faster (:func:`slower_than_eager`: on this
CPU the CIFAR CNN's inductor step at one thread was slower than its eager
one). The rule is the same on every device: a GPU's launch-bound eager steps
gain more from a compile, so a long GPU run passes the threshold, and a short
one is over before a compile could have paid. ``bench/test_time_to_result.py``
measures the outcome; the README's performance section has the tables.

Example::

    choice = choose_up_front("auto")  # None: time the steps first
    clock = StepClock()
    ...  # clock.add(seconds) after each eager step, until clock.ready
    choice = choose_by_pace(clock.pace, steps_left=600)  # CompileChoice(False, "auto: ...")
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..leyline.constants import AUTO_COMPILE_MIN_EAGER_SECONDS, AUTO_COMPILE_TIMED_STEPS


@dataclass(frozen=True, slots=True)
class CompileChoice:
    """Whether the training step compiles, and why, in words a person reads in the summary."""

    compile: bool
    reason: str


def choose_up_front(mode: str) -> CompileChoice | None:
    """The choice that needs no measurement, or ``None`` (``"auto"``: time the eager steps
    with a :class:`StepClock`, then :func:`choose_by_pace`).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "always":
        return CompileChoice(True, "--compile always")
    if mode == "never":
        return CompileChoice(False, "--compile never")
    if mode != "auto":
        raise ValueError(f"unknown compile mode {mode!r}; known: ['auto', 'always', 'never']")
    return None


def device_clock(device: torch.device) -> Callable[[], float]:
    """Seconds, read once the work queued on ``device`` is done (CUDA runs asynchronously:
    without the wait, a step would be timed when it was queued, not when it ended)."""
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def choose_by_pace(step_seconds: float, steps_left: int,
                   threshold: float = AUTO_COMPILE_MIN_EAGER_SECONDS) -> CompileChoice:
    """``"auto"``'s choice on a CPU: compile when the ``steps_left`` steps at
    ``step_seconds`` each would take at least ``threshold`` seconds eagerly."""
    projected = step_seconds * steps_left
    if projected >= threshold:
        return CompileChoice(True, f"auto: about {projected:.0f} s of eager steps left; "
                                   f"compiling pays past {threshold:.0f} s")
    return CompileChoice(False, f"auto: eager, about {projected:.0f} s of steps left; "
                                f"compiling pays only past {threshold:.0f} s "
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


__all__ = ["CompileChoice", "StepClock", "choose_by_pace", "choose_up_front", "device_clock",
           "slower_than_eager"]
