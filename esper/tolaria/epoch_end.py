"""The end of an epoch: validation, tournaments, the lifecycle step and the decisions.

A mixin of :class:`~esper.tolaria.trainer.Trainer` (which provides what is
declared under ``TYPE_CHECKING`` here): :meth:`EpochEnd.end_epoch` measures the
model on the validation split, prunes the seeds that raise or blow up in it,
decides the tournaments whose dwell ended, steps every slot's lifecycle,
applies the agreed decisions and records the epoch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..core import lifecycle
from ..leyline import SeedStage, SlotTelemetry, is_blended
from ..leyline.constants import DEFAULT_MAX_BLEND_LOSS_RATIO
from ..ops.telemetry import GradientEMA
from ..tamiyo import Decision
from . import breakers, tournaments
from .apply import GERMINATED, apply_decision, command_rejection
from .consensus import Proposal
from .culprit import survive
from .evaluate import Validation, validate
from .hardware import autocast
from .records import EpochRecord, SlotSnapshot
from .seeding import germination_seed

if TYPE_CHECKING:
    from typing import Any

    from ..core.breaker import BreakerState
    from ..data import TaskData
    from ..leyline import TelemetryEvent
    from ..nn.model import MorphogeneticModel
    from ..optim import OptimizerState
    from .config import GrowConfig
    from .decider import Decider
    from .parallelism import Parallelism
    from .step_runner import StepRunner


class EpochEnd:
    """The trainer's epoch boundary (see the module docstring)."""

    if TYPE_CHECKING:
        config: GrowConfig
        data: TaskData
        model: MorphogeneticModel
        optimizer: OptimizerState
        decider: Decider
        parallel: Parallelism
        runner: StepRunner
        device: torch.device
        epoch: int
        records: list[EpochRecord]
        breakers: dict[str, BreakerState]

        def _emit(self, record: dict[str, Any]) -> None: ...
        def _lifecycle_event(self, event: TelemetryEvent) -> None: ...
        def _decision_event(self, decision: Decision, outcome: str) -> None: ...
        def _prune_tripped(self) -> None: ...
        def _prune_raiser(self, slot: str, error: BaseException) -> None: ...
        def _fresh_breaker(self, slot: str) -> None: ...
        def host_lr(self) -> float: ...

    def end_epoch(self, loss: float, ema: GradientEMA | None, seconds: float) -> EpochRecord:
        """Validation, counterfactuals, lifecycle step and controller decisions.

        Seeds whose breaker tripped in the epoch are pruned first; a seed that
        raises during validation is pruned and validation runs again; a blended
        seed whose loss blows up against its host-alone counterfactual is pruned
        (reason ``blowup``) and validation runs again without it. After a
        germinate or prune every process checks it holds what the others hold.
        """
        model = self.model
        topology = [name for name, _ in model.named_parameters()]
        self._prune_tripped()
        for slot in tournaments.commit_drops(model):
            self._fresh_breaker(slot)
        validation = self._measure()
        gradients = model.record_gradients(ema) if ema is not None else {}
        decided = tournaments.decide(model, self.optimizer, validation, gradients)
        self.optimizer = decided.optimizer
        for slot in decided.pruned:
            self._fresh_breaker(slot)
        val = validation.accuracy
        contributions = validation.counterfactuals()
        probes = {**validation.probe_reductions(), **decided.winners}
        finite = math.isfinite(loss) and math.isfinite(val)
        telemetry = {name: SlotTelemetry(val, contributions.get(name), finite=finite,
                                         probe_loss_reduction=probes.get(name))
                     for name in model.seed_slots}
        self._lifecycle(val, telemetry)
        self.optimizer = self.optimizer.synced(model)
        if [name for name, _ in model.named_parameters()] != topology:
            self.parallel.check(f"weights and slot states after epoch {self.epoch}'s germinate "
                                "or prune", self.config, model)
        shots = tuple(SlotSnapshot.of(name, state, contributions.get(name))
                      for name, state in model.slot_states().items())
        record = EpochRecord(self.epoch, loss, val, shots, seconds,
                             val_loss=validation.model.mean_loss, lr=self.host_lr())
        self.records.append(record)
        return record

    def _measure(self) -> Validation:
        """Validation with every seed that raises in it or blows up pruned (see end_epoch)."""
        while True:
            states = self.model.slot_states()
            blended = [n for n, s in states.items() if is_blended(s.stage)]
            probed = {n: s.gates.probe_alpha for n, s in states.items()
                      if s.stage == SeedStage.TRAINING and not s.in_tournament}
            validation, _ = survive(  # a tournament pruned for raising is not scored again
                lambda b=blended, p=probed: self._validate(b, p, tournaments.due(self.model)),
                self.model.seed_slots, self._prune_raiser)
            ratio = DEFAULT_MAX_BLEND_LOSS_RATIO
            blown = [n for n in validation.blown_up(ratio)
                     if states[n].stage != SeedStage.FOSSILIZED]
            if not blown:
                return validation
            for name in blown:
                slot = self.model.seed_slots[name]
                slot.prune(breakers.BLOWUP, detail=validation.blowup(name, ratio))
                self._fresh_breaker(name)

    def _validate(self, blended: list[str], probed: dict[str, float],
                  due: dict[str, float]) -> Validation:
        """Validation of the model, of each ``blended`` slot without its seed, of each
        ``probed`` slot with its seed at the probe alpha and of each candidate of each
        ``due`` tournament alone at the probe alpha, over the whole split."""
        vx, vy = self.data.val
        with autocast(self.device, self.runner.autocast):
            validation = validate(self.model, vx, vy, blended, probed, tournaments=due)
        return self.parallel.reduce_validation(validation)

    # ------------------------------------------------------------------ lifecycle

    def _lifecycle(self, val: float, telemetry: dict[str, SlotTelemetry]) -> None:
        """Propose the epoch's outcome, agree on it, then apply only what was agreed.

        Each slot's lifecycle step is applied where every process proposed the
        same; the decisions (the controller's, or the commands') all together
        or not at all, so a refused germination is not counted either.
        """
        for slot in self.model.seed_slots.values():  # G2 reads it: commit it before proposing
            slot.record_movement()
        states = {name: lifecycle.step(state, telemetry[name])  # proposed: nothing committed
                  for name, state in self.model.slot_states().items()}
        decisions, memory = self.decider.propose(self.epoch, val, states, self.parallel)
        agreement = self.parallel.agree(Proposal(states, tuple(decisions)), self.epoch)
        for disagreement in agreement.disagreements:  # nothing of it applies, on any process
            self._emit({"kind": "consensus", "epoch": self.epoch, **disagreement.to_dict(),
                        "applied": False})
        self.model.step_epoch({name: telemetry[name] for name in agreement.stepped})
        self.decider.settle(memory, applied=agreement.unanimous)
        torch.manual_seed(germination_seed(self.config.seed, self.epoch))
        apply = self._apply_external if self.decider.external else self._apply
        for decision in agreement.decisions:
            apply(decision, telemetry)

    def _apply_external(self, decision: Decision, telemetry: dict[str, SlotTelemetry]) -> None:
        """A verified command: one the lifecycle refuses changes nothing and is reported.

        A prune or fossilize naming another seed than the slot's is rejected
        (a ``COMMAND_REJECTED`` event, reason ``seed_mismatch``).
        """
        rejection = command_rejection(decision, self.model.seed_slots[decision.slot].state)
        if rejection is not None:
            self._lifecycle_event(rejection)
            return
        try:
            self._apply(decision, telemetry)
        except (ValueError, RuntimeError) as exc:
            self._decision_event(decision, f"rejected: {exc}")

    def _apply(self, decision: Decision, telemetry: dict[str, SlotTelemetry]) -> None:
        """Apply ``decision`` (see :func:`~.apply.apply_decision`); a germinated seed gets a
        fresh breaker."""
        outcome = apply_decision(self.model.seed_slots[decision.slot], decision,
                                 telemetry[decision.slot], self.config.blend_algorithm)
        if outcome == GERMINATED:
            self._fresh_breaker(decision.slot)
        self._decision_event(decision, outcome)


__all__ = ["EpochEnd"]
