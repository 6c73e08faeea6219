"""How the trainer runs one training step: compiled (an eager retry when it raises) or eager
as :mod:`~.compile_policy` chooses, in the run's precision, at the schedule's learning
rate, and telling a person when it compiles and why it does or does not.

Example::

    runner = StepRunner("auto", backend="inductor", autocast=None, reduce=None,
                        device=torch.device("cpu"))
    result = runner.run(model, run, xb, yb, measure=True, lr_scale=1.0, prune=prune_raiser,
                        steps_left=600)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..nn.model import MorphogeneticModel
from ..ops.isolation import ProbeSquares, probe_squares
from .compile_policy import (
    CompileChoice,
    StepClock,
    choose_by_pace,
    choose_up_front,
    device_clock,
    slower_than_eager,
)
from .compiled import CompileCounter, build_probe, build_step
from .culprit import step_or_prune
from .inputs import StepOptions, StepReduce
from .step import StepFn, StepResult
from .topology_run import TopologyRun

Notice = Callable[[str], None]
"""Receives a line worth showing a person (a compile starting, and how long it took)."""
Prune = Callable[[str, BaseException], None]
"""Prunes the seed in a slot that raised (see :func:`~.culprit.step_or_prune`)."""
Share = Callable[[float], float]
"""The ranks' common value of a measured step time (their mean), so they choose alike."""


@dataclass
class StepRunner:
    """The compiled step and its eager twin, which of them runs, the topologies already
    compiled, and the isolation probe's arithmetic to match.

    Arguments:
        mode: ``"auto"``, ``"always"`` or ``"never"`` (see :mod:`~.compile_policy`).
        backend: the compile backend (counted by :attr:`counter`).
        autocast: the forward's autocast dtype, ``None`` for fp32.
        reduce: the data-parallel reduction, ``None`` in a single process.
        device: where the steps run.
        notify: where the compile notices go (``None``: nowhere).
        share: the data-parallel ranks' mean of a step time (``None``: one process).
        clock: the timer of the steps ``"auto"`` measures (``None``: the device's
            :func:`~.compile_policy.device_clock`).
    """

    mode: str
    backend: str
    autocast: torch.dtype | None
    reduce: StepReduce | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notify: Notice | None = None
    share: Share | None = None
    clock: Callable[[], float] | None = None
    counter: CompileCounter = field(init=False)
    probe_counter: CompileCounter = field(init=False)
    choice: CompileChoice | None = field(init=False)

    def __post_init__(self) -> None:
        self.counter = CompileCounter(self.backend)
        self.probe_counter = CompileCounter(self.backend)
        self._step = build_step(True, self.counter)
        self._eager = build_step(False)
        self._probe = build_probe(True, self.probe_counter)
        self._compiled: set[tuple[str, ...]] = set()
        self._pace = StepClock()
        self._eager_pace: float | None = None  # auto chose to compile at this eager pace
        self.choice = choose_up_front(self.mode)
        self._clock = self.clock if self.clock is not None else device_clock(self.device)

    @property
    def compiling(self) -> bool:
        """Whether the steps run compiled (``False`` while ``"auto"`` is still timing)."""
        return self.choice is not None and self.choice.compile

    @property
    def probe(self) -> ProbeSquares:
        """The isolation probe's arithmetic, compiled (through :attr:`probe_counter`)
        exactly when the steps are."""
        return self._probe if self.compiling else probe_squares

    def why(self) -> str:
        """Why the steps run compiled or eager (``"auto"`` still timing: it says so)."""
        if self.choice is None:
            return "auto: the run ended before enough eager steps were timed to choose"
        return self.choice.reason

    def options(self, measure: bool) -> StepOptions:
        """How the steps run: measuring the group norms or not."""
        return StepOptions(measure=measure, reduce=self.reduce, autocast=self.autocast)

    def run(self, model: MorphogeneticModel, run: TopologyRun, xb: torch.Tensor,
            yb: torch.Tensor, *, measure: bool, lr_scale: float, prune: Prune,
            steps_left: int = 0) -> StepResult | None:
        """One step at ``lr_scale`` times each group's rate, or ``None`` when a seed raised
        in it and ``prune`` pruned it. The first compiled step of a topology compiles its
        graph: :attr:`notify` hears before, and after with the time it took. While
        ``"auto"`` times the eager steps, ``steps_left`` (this one included) is how many
        the run has left, for its choice."""
        run.schedule(lr_scale)
        options = self.options(measure)

        def run_with(step: StepFn) -> Callable[[], StepResult]:
            return lambda: step(model, run.step_inputs(), xb, yb, options)

        if self.choice is None:
            started = self._clock()
            result = step_or_prune(run_with(self._eager), None, model.seed_slots, prune)
            self._time(self._clock() - started, steps_left)
            return result
        if not self.choice.compile:
            return step_or_prune(run_with(self._eager), None, model.seed_slots, prune)
        topology = tuple(run.inputs.params)
        first = topology not in self._compiled
        if first:
            self._say("compiling the training step... (first time for these seeds: "
                      "germinating or pruning one compiles again)")
        graphs, seconds = self.counter.graphs, self.counter.seconds
        started = self._clock() if self._eager_pace is not None else 0.0
        result = step_or_prune(run_with(self._step), run_with(self._eager), model.seed_slots,
                               prune)
        if first:
            self._compiled.add(topology)
            if self.counter.graphs > graphs:
                self._say(f"compiled the training step in {self.counter.seconds - seconds:.1f}s "
                          f"({self.counter.graphs} graph(s) so far)")
        elif self._eager_pace is not None:
            self._check_compiled(self._clock() - started)
        return result

    def _time(self, seconds: float, steps_left: int) -> None:
        """Count an eager step of ``"auto"``; once enough are timed, choose (every
        rank of a data-parallel run at the same step: :attr:`share` is a collective; the
        clock's median shrugs off a step that ran twice because a seed raised)."""
        self._pace.add(seconds)
        if self._pace.ready:
            pace = self._shared(self._pace.pace)
            self.choice = choose_by_pace(pace, max(steps_left - 1, 0))
            verb = "compiles" if self.choice.compile else "runs eagerly"
            self._say(f"the training step {verb} ({self.choice.reason})")
            if self.choice.compile:
                self._eager_pace, self._pace = pace, StepClock()

    def _check_compiled(self, seconds: float) -> None:
        """Count a compiled step that compiled nothing, of a run ``"auto"`` chose to compile
        by pace; once enough are timed, go back to eager for good if they were not faster
        (compiled must never be slower than eager)."""
        assert self._eager_pace is not None
        self._pace.add(seconds)
        if not self._pace.ready:
            return
        compiled, eager = self._shared(self._pace.pace), self._eager_pace
        self._eager_pace = None  # judged once
        if compiled >= eager:
            self.choice = slower_than_eager(compiled, eager)
            self._say(f"the training step runs eagerly again ({self.choice.reason})")

    def _shared(self, seconds: float) -> float:
        return seconds if self.share is None else self.share(seconds)

    def _say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)


__all__ = ["Notice", "Prune", "StepRunner"]
