"""One rank of a multi-process run: how it shares with the others, and what it writes.

:class:`DataParallel` is the :class:`~esper.tolaria.parallelism.Parallelism`
of one rank of a ``torchrun`` job (see :mod:`esper.tolaria.distributed`);
:func:`make_trainer` gives it to the trainer (a single process gets
:class:`~esper.tolaria.parallelism.SingleProcess`, and nothing here runs).
The ranks share only where they must agree:

* data: the training and validation splits are sharded by rank;
* step: gradients and loss are averaged and seed fault flags ORed inside the
  (compiled) step, one all-reduce per step, so every rank applies the same
  update and its circuit breakers see the same faults;
* after the epoch's steps: BatchNorm statistics are averaged and the isolation
  probes' violations (each rank probes its own batches) are summed;
* validation: correct counts and totals are summed, then turned into the same
  percentages as one process would compute on the whole split;
* lifecycle: every slot's proposed step and the controller's decisions go
  through one consensus collective (:mod:`esper.tolaria.consensus`); what the
  ranks disagree on is not applied, is logged as a warning by each dissenting
  rank and is recorded as a ``"consensus"`` event; rank 0 alone reads the
  external commands and broadcasts their decisions;
* at the start, on resume and after every change of topology (germinate,
  prune) the ranks check that they hold the same configuration and
  bit-identical weights and slot states, and all raise if they do not. Nothing
  wraps the model: the step's reduction bucket is built from the gradients of
  the parameters that exist, so a new seed's are reduced from its first step
  and a pruned one's are no longer expected.

Only rank 0 writes the run directory; :class:`NullWriter` stands in elsewhere.
For tests, ``ESPER_REPLICA_DUMP=DIR`` makes every rank save its final state
as a checkpoint in ``DIR/rank-R`` (:func:`dump_replica`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any

from ..checkpoint import save_checkpoint
from ..core.serialize import state_to_dict
from ..data import TaskData
from ..nn.model import MorphogeneticModel
from ..tamiyo import Decision
from .config import GrowConfig
from .consensus import Agreement, Proposal, agree
from .evaluate import Score, Validation
from .external import CommandSource
from .fingerprint import fingerprint, tensor_fingerprint
from .inputs import StepReduce
from .parallelism import SingleProcess, isolation_violations
from .records import EpochRecord, RunSummary
from .replicas import Replicas
from .trainer import EventSink, Trainer

REPLICA_DUMP_ENV = "ESPER_REPLICA_DUMP"
_log = logging.getLogger("esper")


@dataclass(frozen=True)
class DataParallel:
    """One rank's :class:`~esper.tolaria.parallelism.Parallelism`; see the module docstring.

    Arguments:
        replicas: this process's rank and the collectives.
    """

    replicas: Replicas

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.replicas.rank

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which reads the commands and writes the run directory."""
        return self.replicas.is_main

    @property
    def reduce(self) -> StepReduce:
        """Gradients and loss averaged, fault flags ORed: one all-reduce per step."""
        return self.replicas.reduce_step

    def shard(self, task: TaskData) -> TaskData:
        """This rank's shard (see :meth:`~esper.tolaria.replicas.Replicas.shard_task`)."""
        return self.replicas.shard_task(task)

    def check(self, what: str, config: GrowConfig, model: MorphogeneticModel) -> None:
        """Raise on every rank unless all hold the same config, weights and slot states."""
        states = json.dumps({n: state_to_dict(s) for n, s in model.slot_states().items()},
                            sort_keys=True)
        weights = tensor_fingerprint(chain(model.named_parameters(), model.named_buffers()))
        self.replicas.check_same(what, fingerprint(repr(config), states, str(weights)))

    def merge_epoch(self, model: MorphogeneticModel, violations: Mapping[str, int]) -> None:
        """Average the buffers; every rank's isolation violations of the epoch count on
        every rank."""
        self.replicas.average_buffers(model)
        names = list(model.seed_slots)
        now = isolation_violations(model)
        mine = [now[name] - violations[name] for name in names]
        for name, own, total in zip(names, mine, self.replicas.sum(mine), strict=True):
            if total != own:
                model.seed_slots[name].record(isolation_violations=total - own)

    def reduce_validation(self, validation: Validation) -> Validation:
        """Every score of this rank's validation, counts and losses summed over the ranks
        (a tournament's candidate scores too: every rank selects the same winner)."""
        candidates = [s for scores in validation.candidates.values() for s in scores]
        scores = [validation.model, *validation.without.values(), *validation.probed.values(),
                  *candidates]
        counts = self.replicas.sum([n for s in scores for n in (s.correct, s.total)])
        losses = self.replicas.sum_real([s.loss for s in scores])
        summed = iter([Score(counts[2 * i], losses[i], counts[2 * i + 1])
                       for i in range(len(scores))])
        model = next(summed)
        without = {name: next(summed) for name in validation.without}
        probed = {name: next(summed) for name in validation.probed}
        tournaments = {name: tuple(next(summed) for _ in scores)
                       for name, scores in validation.candidates.items()}
        return Validation(model, without, probed, tournaments)

    def poll(self, source: CommandSource | None) -> tuple[list[Decision], dict[str, Any]]:
        """Rank 0 reads and verifies the new commands; every rank gets their decisions and
        the source's state (so every rank's checkpointed trainer state is the same)."""
        text = None
        if source is not None:
            decisions = [d.to_dict() for d in source.poll()]
            text = json.dumps({"decisions": decisions, "state": source.state()})
        received = json.loads(self.replicas.broadcast_text(text))
        return [Decision(**d) for d in received["decisions"]], received["state"]

    def agree(self, proposal: Proposal, epoch: int) -> Agreement:
        """Only what every rank proposed (one collective; see :func:`.consensus.agree`);
        a warning for each item this rank disagrees on."""
        agreement = agree(proposal, self.replicas.gather_codes(proposal.codes()))
        for disagreement in agreement.disagreements:
            if self.rank in disagreement.dissenting:
                _log.warning(
                    "epoch %d: rank %d disagrees with the other ranks on the %s of slot %r "
                    "(proposals by rank: %s); it is not applied on any rank", epoch, self.rank,
                    disagreement.item, disagreement.slot, list(disagreement.proposals))
        return agreement

    def share(self, seconds: float) -> float:
        """The ranks' mean of ``seconds`` (one collective), so every rank chooses alike."""
        return self.replicas.sum_real([seconds])[0] / self.replicas.world_size


def make_trainer(config: GrowConfig, data: TaskData, sink: EventSink | None = None,
                 replicas: Replicas | None = None) -> Trainer:
    """The trainer for this process: alone, or one rank's of a torchrun job.

    Raises:
        RuntimeError: the ranks do not start from the same configuration and weights.
    """
    options: dict[str, Any] = {} if sink is None else {"sink": sink}
    parallel = SingleProcess() if replicas is None else DataParallel(replicas)
    return Trainer(config, data, **options, parallel=parallel)


class NullWriter:
    """Stands in for :class:`~esper.tolaria.report.RunWriter` on ranks other than 0."""

    def event(self, record: dict[str, Any]) -> None:
        """Writes nothing."""

    def epoch(self, record: EpochRecord) -> None:
        """Writes nothing."""

    def finish(self, summary: RunSummary, records: Sequence[EpochRecord],
               baseline: Sequence[float] | None = None) -> None:
        """Writes nothing."""

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


def dump_replica(trainer: Trainer, replicas: Replicas | None,
                 env: Mapping[str, str] | None = None) -> Path | None:
    """Test hook: with ``ESPER_REPLICA_DUMP=DIR``, save this rank's final state.

    Every rank writes a checkpoint (model, optimizer, trainer state) to
    ``DIR/rank-R`` so a test can compare the replicas bit for bit; rank 0's
    run directory is not touched. Returns the directory, or ``None`` when the
    variable is unset.
    """
    directory = (os.environ if env is None else env).get(REPLICA_DUMP_ENV)
    if not directory:
        return None
    rank = 0 if replicas is None else replicas.rank
    return save_checkpoint(Path(directory) / f"rank-{rank}", model=trainer.model,
                           optimizer=trainer.optimizer, trainer_state=trainer.trainer_state())
