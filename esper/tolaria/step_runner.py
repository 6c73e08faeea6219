"""How the trainer runs one training step: compiled (an eager retry when it raises), in the
run's precision, at the schedule's learning rate, and telling a person when it compiles.

Example::

    runner = StepRunner(compile=True, backend="inductor", autocast=None, reduce=None)
    result = runner.run(model, run, xb, yb, measure=True, lr_scale=1.0, prune=prune_raiser)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..nn.model import MorphogeneticModel
from .compiled import CompileCounter, build_step
from .culprit import step_or_prune
from .inputs import StepOptions, StepReduce
from .step import StepFn, StepResult
from .topology_run import TopologyRun

Notice = Callable[[str], None]
"""Receives a line worth showing a person (a compile starting, and how long it took)."""
Prune = Callable[[str, BaseException], None]
"""Prunes the seed in a slot that raised (see :func:`~.culprit.step_or_prune`)."""


@dataclass
class StepRunner:
    """The compiled step and its eager twin, and the topologies already compiled.

    Arguments:
        compile: run the compiled step (else the eager one only).
        backend: the compile backend (counted by :attr:`counter`).
        autocast: the forward's autocast dtype, ``None`` for fp32.
        reduce: the data-parallel reduction, ``None`` in a single process.
        notify: where the compile notices go (``None``: nowhere).
    """

    compile: bool
    backend: str
    autocast: torch.dtype | None
    reduce: StepReduce | None
    notify: Notice | None = None
    counter: CompileCounter = field(init=False)

    def __post_init__(self) -> None:
        self.counter = CompileCounter(self.backend)
        self._step = build_step(self.compile, self.counter)
        self._eager = build_step(False)
        self._compiled: set[tuple[str, ...]] = set()

    def options(self, measure: bool) -> StepOptions:
        """How the steps run: measuring the group norms or not."""
        return StepOptions(measure=measure, reduce=self.reduce, autocast=self.autocast)

    def run(self, model: MorphogeneticModel, run: TopologyRun, xb: torch.Tensor,
            yb: torch.Tensor, *, measure: bool, lr_scale: float,
            prune: Prune) -> StepResult | None:
        """One step at ``lr_scale`` times each group's rate, or ``None`` when a seed raised
        in it and ``prune`` pruned it. The first step of a topology compiles its graph:
        :attr:`notify` hears before, and after with the time it took."""
        options = self.options(measure)
        run.schedule(lr_scale)

        def run_with(step: StepFn) -> Callable[[], StepResult]:
            return lambda: step(model, run.step_inputs(), xb, yb, options)

        topology = tuple(run.inputs.params)
        first = self.compile and topology not in self._compiled
        if first:
            self._say("compiling the training step... (first time for these seeds: "
                      "germinating or pruning one compiles again)")
        graphs, seconds = self.counter.graphs, self.counter.seconds
        result = step_or_prune(run_with(self._step), run_with(self._eager) if self.compile
                               else None, model.seed_slots, prune)
        if first:
            self._compiled.add(topology)
            if self.counter.graphs > graphs:
                self._say(f"compiled the training step in {self.counter.seconds - seconds:.1f}s "
                          f"({self.counter.graphs} graph(s) so far)")
        return result

    def _say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)


__all__ = ["Notice", "Prune", "StepRunner"]
