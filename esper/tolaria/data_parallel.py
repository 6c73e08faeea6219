"""One rank of a multi-process run: its trainer, and what it writes (rank 0 only).

:class:`DataParallelTrainer` is the :class:`~esper.tolaria.trainer.Trainer` of
one rank of a ``torchrun`` job (see :mod:`esper.tolaria.distributed`). With a
single process :func:`make_trainer` returns the plain trainer and nothing here
runs. It differs from the plain trainer only where the ranks must agree:

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
  rank and is recorded as a ``"consensus"`` event;
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
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..checkpoint import save_checkpoint
from ..core import lifecycle
from ..core.serialize import state_to_dict
from ..data import TaskData
from ..leyline import SlotTelemetry
from ..nn.model import MorphogeneticModel
from ..ops.telemetry import GradientEMA, record
from ..optim.sgd import OptimizerState
from ..tamiyo import ControllerMemory, Decision
from .config import GrowConfig
from .consensus import Agreement, Proposal, agree
from .distributed import Replicas, fingerprint, tensor_fingerprint
from .evaluate import Score, Validation
from .records import EpochRecord, RunSummary
from .seeding import germination_seed
from .trainer import EventSink, Trainer

REPLICA_DUMP_ENV = "ESPER_REPLICA_DUMP"
_log = logging.getLogger("esper")


@dataclass
class DataParallelTrainer(Trainer):
    """The trainer of one rank; see the module docstring for what the ranks share.

    Arguments (beyond :class:`~esper.tolaria.trainer.Trainer`'s):
        replicas: this process's rank and the collectives (keyword only).

    Raises:
        RuntimeError: the ranks do not start from the same configuration and weights.
    """

    replicas: Replicas = field(kw_only=True)

    def __post_init__(self) -> None:
        self.data = self.replicas.shard_task(self.data)
        super().__post_init__()
        self._reduce = self.replicas.reduce_step
        if self.commands is not None and not self.replicas.is_main:
            # Rank 0 alone reads the commands (a FIFO's lines would be split between
            # readers) and broadcasts the verified ones; see _poll_commands.
            self.commands.close()
            self.commands = None
        self._check_replicas("configuration, initial weights and slot states")

    # ------------------------------------------------------------------ checks

    def _topology(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.model.named_parameters())

    def _check_replicas(self, what: str) -> None:
        """Raise on every rank unless all hold the same config, weights and slot states."""
        model = self.model
        states = json.dumps({n: state_to_dict(s) for n, s in model.slot_states().items()},
                            sort_keys=True)
        weights = tensor_fingerprint(chain(model.named_parameters(), model.named_buffers()))
        self.replicas.check_same(what, fingerprint(repr(self.config), states, str(weights)))

    # ------------------------------------------------------------------ training

    def _violations(self) -> dict[str, int]:
        return {name: state.metrics.isolation_violations
                for name, state in self.model.slot_states().items()}

    def train_epoch(self) -> tuple[float, GradientEMA | None]:
        """The plain epoch on this rank's shard, then buffers and probe results shared.

        The loss is already the same on every rank (each step's is averaged).
        """
        before = self._violations()
        loss, ema = super().train_epoch()
        self.replicas.average_buffers(self.model)
        self._sum_violations(before)
        return loss, ema

    def _sum_violations(self, before: Mapping[str, int]) -> None:
        """Every rank's isolation violations of this epoch count on every rank."""
        names = list(self.model.seed_slots)
        now = self._violations()
        mine = [now[name] - before[name] for name in names]
        for name, own, total in zip(names, mine, self.replicas.sum(mine), strict=True):
            if total != own:
                slot = self.model.seed_slots[name]
                slot.state = record(slot.state, isolation_violations=total - own)

    # ------------------------------------------------------------------ epoch boundary

    def end_epoch(self, loss: float, ema: GradientEMA | None, seconds: float) -> EpochRecord:
        """The plain epoch boundary (reduced metrics, consensus); replicas checked on change."""
        topology = self._topology()
        result = super().end_epoch(loss, ema, seconds)
        if self._topology() != topology:
            self._check_replicas(f"weights and slot states after epoch {self.epoch}'s "
                                 "germinate or prune")
        return result

    def _validate(self, blended: list[str], probed: dict[str, float]) -> Validation:
        """Every score of the plain validation, counts and losses summed over the ranks."""
        mine = super()._validate(blended, probed)
        scores = [mine.model, *mine.without.values(), *mine.probed.values()]
        counts = self.replicas.sum([n for s in scores for n in (s.correct, s.total)])
        losses = self.replicas.sum_real([s.loss for s in scores])
        summed = [Score(counts[2 * i], losses[i], counts[2 * i + 1]) for i in range(len(scores))]
        model, rest = summed[0], summed[1:]
        return Validation(model, dict(zip(mine.without, rest[:len(blended)], strict=True)),
                          dict(zip(mine.probed, rest[len(blended):], strict=True)))

    def _propose(self, val: float, telemetry: Mapping[str, SlotTelemetry]
                 ) -> tuple[Proposal, ControllerMemory]:
        """This rank's proposal for the epoch and the controller memory that goes with it.

        Each slot's state after its lifecycle step (pure, nothing committed) and
        the decisions taken on those states. (Tests override this to make one
        rank disagree.)
        """
        states = {name: lifecycle.step(state, telemetry[name])
                  for name, state in self.model.slot_states().items()}
        if self.config.commands is None:
            decisions, memory = self.controller.decide(self.epoch, val, states, self.memory)
        else:
            decisions, memory = self._poll_commands(), self.memory
        return Proposal(states, tuple(decisions)), memory

    def _poll_commands(self) -> list[Decision]:
        """Rank 0 reads and verifies the new commands; every rank gets their decisions and
        the source's state (so every rank's checkpointed trainer state is the same)."""
        text = None
        if self.commands is not None:
            decisions = [d.to_dict() for d in self.commands.poll()]
            text = json.dumps({"decisions": decisions, "state": self.commands.state()})
        received = json.loads(self.replicas.broadcast_text(text))
        self.command_state = received["state"]
        return [Decision(**d) for d in received["decisions"]]

    def _lifecycle(self, val: float, telemetry: dict[str, SlotTelemetry]) -> None:
        """Propose, agree (one collective), then apply only what every rank proposed."""
        proposal, memory = self._propose(val, telemetry)
        agreement = agree(proposal, self.replicas.gather_codes(proposal.codes()))
        self._report(agreement)
        self.model.step_epoch({name: telemetry[name] for name in agreement.stepped})
        # Decisions apply all together or not at all: a refused germination is not counted.
        self.memory = memory if agreement.unanimous else replace(
            self.memory, accuracies=memory.accuracies)
        torch.manual_seed(germination_seed(self.config.seed, self.epoch))
        apply = self._apply if self.config.commands is None else self._apply_external
        for decision in agreement.decisions:
            apply(decision, telemetry)

    def _report(self, agreement: Agreement) -> None:
        """A ``"consensus"`` event per disagreement (all ranks); a warning on each dissenter."""
        for disagreement in agreement.disagreements:
            self._emit({"kind": "consensus", "epoch": self.epoch, **disagreement.to_dict(),
                        "applied": False})
            rank = self.replicas.rank
            if rank in disagreement.dissenting:
                _log.warning(
                    "epoch %d: rank %d disagrees with the other ranks on the %s of slot %r "
                    "(proposals by rank: %s); it is not applied on any rank", self.epoch, rank,
                    disagreement.item, disagreement.slot, list(disagreement.proposals))

    # ------------------------------------------------------------------ persistence

    def restore(self, model: MorphogeneticModel, optimizer: OptimizerState,
                state: dict[str, Any]) -> None:
        """The plain restore, then a check that every rank resumed the same state."""
        super().restore(model, optimizer, state)
        self._check_replicas("the resumed checkpoint")


def make_trainer(config: GrowConfig, data: TaskData, sink: EventSink | None = None,
                 replicas: Replicas | None = None) -> Trainer:
    """The trainer for this process: the plain one, or one rank's of a torchrun job."""
    options: dict[str, Any] = {} if sink is None else {"sink": sink}
    if replicas is None:
        return Trainer(config, data, **options)
    return DataParallelTrainer(config, data, **options, replicas=replicas)


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
