"""How the trainer's processes cooperate: one process alone, or the ranks of a data-parallel run.

The :class:`~esper.tolaria.trainer.Trainer` is the same code either way.
Everything the ranks must share goes through its :class:`Parallelism`, at
these points of an epoch:

* set-up: :meth:`~Parallelism.shard` the task; :meth:`~Parallelism.check` that
  every rank starts (and resumes, and continues after a change of topology)
  from the same configuration, weights and slot states;
* every step: :attr:`~Parallelism.reduce`, the reduction inside the step;
* after the epoch's steps: :meth:`~Parallelism.merge_epoch` (BatchNorm
  statistics, the isolation probes' violations);
* validation: :meth:`~Parallelism.reduce_validation`;
* lifecycle: :meth:`~Parallelism.poll` the external commands and
  :meth:`~Parallelism.agree` on the epoch's outcome.

:class:`SingleProcess` is the default: every one of those is the identity (or
does nothing). :class:`~esper.tolaria.data_parallel.DataParallel` is one rank
of a ``torchrun`` job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..data import TaskData
from ..nn.model import MorphogeneticModel
from ..tamiyo import Decision
from .config import GrowConfig
from .consensus import Agreement, Proposal
from .evaluate import Validation
from .external import CommandSource
from .inputs import StepReduce


class Parallelism(Protocol):
    """What the trainer's processes share; see the module docstring for when each is used."""

    @property
    def rank(self) -> int:
        """This process's rank (0 for a single process)."""
        ...

    @property
    def is_main(self) -> bool:
        """Whether this process reads the external commands and writes the run directory."""
        ...

    @property
    def reduce(self) -> StepReduce | None:
        """The reduction of gradients, loss and health flags inside the step (``None``: none)."""
        ...

    def shard(self, task: TaskData) -> TaskData:
        """This process's part of ``task``."""
        ...

    def check(self, what: str, config: GrowConfig, model: MorphogeneticModel) -> None:
        """Raise unless every process holds the same ``config``, weights and slot states.

        ``what`` names the moment in the error (the start, a resume...).
        """
        ...

    def merge_epoch(self, model: MorphogeneticModel, violations: Mapping[str, int]) -> None:
        """Share what the epoch's steps left on each process: BatchNorm statistics, and the
        isolation violations counted since ``violations`` (slot name -> count before)."""
        ...

    def reduce_validation(self, validation: Validation) -> Validation:
        """The validation of the whole split, from this process's part of it."""
        ...

    def poll(self, source: CommandSource | None) -> tuple[list[Decision], dict[str, Any]]:
        """The newly verified commands' decisions and the source's state (to checkpoint).

        Only the main process holds the ``source``; the others pass ``None``.
        """
        ...

    def agree(self, proposal: Proposal, epoch: int) -> Agreement:
        """What to apply of this process's ``proposal`` at the end of ``epoch``."""
        ...

    def share(self, seconds: float) -> float:
        """The processes' mean of a time each measured (so they choose alike; a collective)."""
        ...


class SingleProcess:
    """The one process of a plain run: nothing to share, every proposal applies."""

    rank = 0
    is_main = True
    reduce: StepReduce | None = None

    def shard(self, task: TaskData) -> TaskData:
        """The whole task."""
        return task

    def check(self, what: str, config: GrowConfig, model: MorphogeneticModel) -> None:
        """Nothing to compare with."""

    def merge_epoch(self, model: MorphogeneticModel, violations: Mapping[str, int]) -> None:
        """Nothing to share."""

    def reduce_validation(self, validation: Validation) -> Validation:
        """The validation as it is: it covered the whole split."""
        return validation

    def poll(self, source: CommandSource | None) -> tuple[list[Decision], dict[str, Any]]:
        """The source's new decisions and its state.

        Raises:
            ValueError: no source (a single process always holds it).
        """
        if source is None:
            raise ValueError("a single process polls its own command source; there is none")
        return source.poll(), source.state()

    def agree(self, proposal: Proposal, epoch: int) -> Agreement:
        """All of it: every slot's step and every decision."""
        return Agreement(tuple(proposal.states), tuple(proposal.decisions), ())

    def share(self, seconds: float) -> float:
        """The time itself: there is no other process."""
        return seconds


def isolation_violations(model: MorphogeneticModel) -> dict[str, int]:
    """Slot name -> the isolation violations its metrics count so far."""
    return {name: state.metrics.isolation_violations
            for name, state in model.slot_states().items()}


__all__ = ["Parallelism", "SingleProcess", "isolation_violations"]
