"""The trainer: epochs of compiled steps, telemetry, lifecycle and controller.

Per epoch: train (the compiled step; gradient norms folded into a moving
average at the telemetry stride, isolation probed at the same stride on the
host features the step returns), then validation accuracy, each blended
slot's counterfactual contribution, one ``step`` for every slot, and the
controller's decisions. Every random draw is seeded from ``(seed, epoch)``
(:mod:`esper.tolaria.seeding`), so a run is deterministic on CPU and a
resumed run continues exactly.

One trainer serves a single process and each rank of a data-parallel run:
what the processes share (the step's reduction, validation counts, the
epoch's lifecycle outcome...) goes through its :class:`~.parallelism.Parallelism`,
:class:`~.parallelism.SingleProcess` by default.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.breaker import BreakerState, BreakerStatus
from ..core.tournament import is_candidate_id
from ..data import TaskData, batches
from ..errors import describe
from ..leyline import EventType, SeedStage, TelemetryEvent
from ..leyline.constants import INITIAL_LOSS_SCALE
from ..nn.model import MorphogeneticModel
from ..ops.telemetry import GradientEMA, due
from ..optim import OptimizerState, RunSchedule, optimizer_config
from ..tamiyo import Decision
from . import breakers
from .compiled import CompileCounter
from .config import GrowConfig, build_host
from .culprit import survive
from .decider import Decider
from .epoch_end import EpochEnd
from .hardware import autocast_dtype, resolve_device
from .parallelism import Parallelism, SingleProcess, isolation_violations
from .progress import progress_state, restore_progress
from .records import EpochRecord
from .seeding import epoch_seed, probe_seed
from .step import StepResult
from .step_runner import Notice, StepRunner
from .topology_run import TopologyRun

EXCEPTION = "exception"  # the prune reason of a seed that raised
CANDIDATE_PRUNED = "CANDIDATE_PRUNED"  # the tally's count of tournament candidates pruned
EventSink = Callable[[dict[str, Any]], None]
StepHook = Callable[[int, int], None]
"""Called after each training step with (steps done this epoch, steps per epoch)."""
_log = logging.getLogger("esper")


@dataclass
class Trainer(EpochEnd):
    """Grows a model on a task; see the module docstring for one epoch's work.

    Arguments:
        config: the run's configuration.
        data: the task (the whole of it: ``parallel`` shards it).
        sink: receives every event record (lifecycle, decision, safety, consensus).
        parallel: what this process shares with the others (keyword only).
        on_step: called after each step with (steps done this epoch, steps per epoch).
        notify: receives the lines a person should see (a compile and its duration).

    The run trains on ``config.device`` (resolved by :mod:`~.hardware`), in
    ``config.precision``, with ``config.optimizer`` at the rates of
    :attr:`schedule`; :attr:`runner` runs each step.

    Raises:
        RuntimeError: under data parallelism, the ranks do not start from the
            same configuration and weights.
        DeviceUnavailableError, PrecisionUnsupportedError: the machine cannot run
            the device or precision asked for.
    """

    config: GrowConfig
    data: TaskData
    sink: EventSink = field(default=lambda record: None)
    parallel: Parallelism = field(default_factory=SingleProcess, kw_only=True)
    model: MorphogeneticModel = field(init=False)
    optimizer: OptimizerState = field(init=False)
    decider: Decider = field(init=False)
    epoch: int = 0
    records: list[EpochRecord] = field(default_factory=list)
    counter: CompileCounter = field(init=False)
    probe_counter: CompileCounter = field(init=False)
    tally: dict[str, int] = field(default_factory=dict)
    events_written: int = 0
    global_step: int = 0
    breakers: dict[str, BreakerState] = field(init=False)
    device: torch.device = field(init=False)
    loss_scale: torch.Tensor | None = field(init=False)
    on_step: StepHook | None = field(default=None, kw_only=True)
    notify: Notice | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.data = self.parallel.shard(self.data).to(self.device)
        torch.manual_seed(epoch_seed(cfg.seed, 0))
        topology = self.data.topology
        slots = cfg.slots if cfg.max_seeds > 0 else ()
        self.model = MorphogeneticModel(  # built on the CPU: the same weights on every device
            build_host(self.data, cfg.width), slots=slots,
            task_config=cfg.task_config(topology), gates=cfg.gates,
            on_telemetry=self._lifecycle_event).to(self.device)
        self.optimizer = OptimizerState(optimizer_config(
            cfg.optimizer, lr=cfg.lr, seed_lr=cfg.seed_lr)).synced(self.model)
        self.loss_scale = (torch.tensor([INITIAL_LOSS_SCALE, 0.0], device=self.device)
                           if cfg.precision == "fp16" else None)
        self.breakers = breakers.fresh(tuple(self.model.seed_slots), {})
        self.decider = Decider.of(self.config, topology, frozenset(self.model.seed_slots),
                                  self._lifecycle_event, reads_commands=self.parallel.is_main)
        self.schedule = RunSchedule(cfg.schedule, max(cfg.epochs * self.steps_per_epoch, 1),
                                    cfg.warmup_steps)
        self.runner = StepRunner(cfg.compile, cfg.compile_backend, autocast_dtype(
            cfg.precision, self.device), self.parallel.reduce, self.device,
            notify=self._notice, share=self.parallel.share)
        self.counter, self.probe_counter = self.runner.counter, self.runner.probe_counter
        self.parallel.check("configuration, initial weights and slot states", self.config,
                            self.model)

    # ------------------------------------------------------------------ events

    def _notice(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)

    def _emit(self, record: dict[str, Any]) -> None:
        self.events_written += 1
        self.sink(record)

    def _lifecycle_event(self, event: TelemetryEvent) -> None:
        """Log a slot's, breaker's or command's event, stamped with the trainer's epoch (a
        slot's own counter moves only when the slots step at the end of an epoch: a seed
        pruned before that, its breaker tripped or it raised, would carry the previous one)."""
        event = dataclasses.replace(event, epoch=self.epoch)
        kind = (CANDIDATE_PRUNED if event.type == EventType.SEED_PRUNED
                and is_candidate_id(event.seed_id) else event.type.value)
        self.tally[kind] = self.tally.get(kind, 0) + 1
        self._emit({"kind": "lifecycle", **event.to_dict()})

    def _decision_event(self, decision: Decision, outcome: str) -> None:
        self._emit({"kind": "decision", "epoch": self.epoch, **decision.to_dict(),
                    "outcome": outcome})

    # ------------------------------------------------------------------ training

    def _guarded_step(self, run: TopologyRun, xb: torch.Tensor, yb: torch.Tensor,
                      measure: bool) -> StepResult | None:
        """The step, or ``None`` when a seed raised in it and was pruned (see
        :meth:`~.step_runner.StepRunner.run`)."""
        return self.runner.run(self.model, run, xb, yb, measure=measure,
                               lr_scale=self.schedule.factor(self.global_step),
                               prune=self._prune_raiser, steps_left=self.steps_left)

    def _start_run(self) -> TopologyRun:
        """The steps' inputs and counters for the model's topology now."""
        return TopologyRun.start(self.model, self.optimizer, self.loss_scale)

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in one epoch (full batches only)."""
        count = len(self.data.train[1])
        return count // min(self.config.batch_size, count)

    @property
    def steps_left(self) -> int:
        """Training steps the run has left, the next one included."""
        return max(self.config.epochs * self.steps_per_epoch - self.global_step, 0)

    def host_lr(self) -> float:
        """The host's learning rate at the last step taken (the schedule's value)."""
        return self.optimizer.config.lr * self.schedule.factor(max(self.global_step - 1, 0))

    def _prune_raiser(self, slot: str, error: BaseException) -> None:
        """Prune the seed in ``slot`` that raised ``error`` (reason ``exception``)."""
        seed_slot = self.model.seed_slots[slot]
        if seed_slot.state.stage == SeedStage.FOSSILIZED:
            raise error  # part of the host now: its failure is the host's
        seed_slot.prune(EXCEPTION, detail=describe(error))
        self._fresh_breaker(slot)
        self.optimizer = self.optimizer.synced(self.model)

    def train_epoch(self) -> tuple[float, GradientEMA | None]:
        """One pass over the training data; returns the mean loss and the gradient EMA.

        A seed that misbehaves in a step (a non-finite or blown-up output) has
        that step's update skipped and is muted (alpha 0, on the device) for
        the rest of the epoch; its breaker then prunes it at the epoch's end. A
        seed that raises is pruned at once and the batch runs again without it.
        """
        model, cfg = self.model, self.config
        model.train()
        violations = isolation_violations(model)
        run = self._start_run()
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, self.epoch))
        probe_generator = torch.Generator().manual_seed(probe_seed(cfg.seed, self.epoch))
        ema: GradientEMA | None = None
        losses = []
        x, y = self.data.train
        # Full batches only: a ragged last batch would compile a graph of its own.
        for index, (xb, yb) in enumerate(batches(x, y, min(cfg.batch_size, len(y)), shuffle=True,
                                                 generator=generator, drop_last=True)):
            probe = due(index, cfg.telemetry_stride) and bool(run.names)
            # Compiled, the norms are part of the one graph (a flag would make two);
            # eagerly they cost a kernel call, so only the steps that use them pay it.
            result = self._guarded_step(run, xb, yb, measure=self.runner.compiling or probe)
            while result is None:  # a seed raised and was pruned: run the batch without it
                self._flush(run)
                run = self._start_run()
                ema = None  # its groups changed
                probe = probe and bool(run.names)
                result = self._guarded_step(run, xb, yb, measure=self.runner.compiling or probe)
            self.global_step += 1
            if self.on_step is not None:
                self.on_step(index + 1, self.steps_per_epoch)
            losses.append(result.loss)
            run.count(result)
            if probe:
                sample = run.capture(result)
                ema = GradientEMA.start(sample) if ema is None else ema.update(sample)
                _, pruned = survive(lambda r=result: self._probe_isolation(r, probe_generator),
                                    model.seed_slots, self._prune_raiser)
                if pruned:
                    self._flush(run)
                    run, ema = self._start_run(), None
                    continue
                run.refresh(model.slot_states())
                self._look_at_faults(run)  # syncs, as the probe just did
        self._flush(run)
        self.parallel.merge_epoch(model, violations)  # the loss is already each step's mean
        values = torch.stack(losses)
        finite = values[values.isfinite()]  # skipped steps do not count
        return float(finite.mean() if finite.numel() else values.mean()), ema

    def _probe_isolation(self, result: StepResult, generator: torch.Generator) -> None:
        """The isolation probe on the step's features, in float32 whatever the step's
        precision: it checks where gradients flow, and half precision's rounding would
        read as a leak."""
        features = {name: h.float() for name, h in result.features.items()}
        self.model.probe_isolation(features=features, generator=generator,
                                   squares=self.runner.probe)

    def _flush(self, run: TopologyRun) -> None:
        """Feed the run's counts into the breakers and report skipped updates (one sync)."""
        self._look_at_faults(run)
        skipped = run.take_skipped()
        if skipped:
            self._emit({"kind": "safety", "epoch": self.epoch, "skipped_updates": skipped})

    # ------------------------------------------------------------------ circuit breakers

    def _look_at_faults(self, run: TopologyRun) -> None:
        """Feed the fault counts into the breakers (one sync) and reset them.

        A breaker that opens denies its seed: the seed's learning rates (tensor
        inputs of the step, so nothing recompiles) are zeroed for the epoch.
        """
        if not run.names:
            return
        counts, reasons = run.take_faults()
        self.breakers, events = breakers.observe(self.breakers, counts, self.global_step,
                                                 self.epoch, self.config.breaker, reasons)
        for event in events:
            self._lifecycle_event(event)
        for slot in breakers.tripped(self.breakers):
            run.deny(slot)

    def _fresh_breaker(self, slot: str) -> None:
        """A closed breaker for ``slot``'s seed now (after a germinate or a prune)."""
        self.breakers = breakers.reset(self.breakers, slot,
                                       self.model.seed_slots[slot].state.seed_id)

    def override_breaker(self, slot: str, status: BreakerStatus, reason: str) -> None:
        """Manually set ``slot``'s breaker (an event is emitted even if unchanged).

        Raises:
            ValueError: unknown slot or status.
        """
        self.breakers, events = breakers.forced(self.breakers, slot, status, self.global_step,
                                                reason, self.epoch)
        for event in events:
            self._lifecycle_event(event)

    def _prune_tripped(self) -> None:
        """Prune every seed whose breaker is not CLOSED (with the reason it tripped for)."""
        for slot in breakers.tripped(self.breakers):
            seed = self.model.seed_slots[slot]
            if seed.state.has_seed and seed.state.stage is not SeedStage.FOSSILIZED:
                seed.prune(breakers.trip_reason(self.breakers[slot]))
            self._fresh_breaker(slot)

    def run_epoch(self) -> EpochRecord:
        """Train and close one epoch."""
        self.epoch += 1
        started = time.perf_counter()
        loss, ema = self.train_epoch()
        return self.end_epoch(loss, ema, time.perf_counter() - started)

    def close(self) -> None:
        """Release the command source, if any (the run calls it when it ends)."""
        self.decider.close()

    # ------------------------------------------------------------------ persistence

    def trainer_state(self) -> dict[str, Any]:
        """JSON-ready progress for a checkpoint (see :func:`~.progress.progress_state`)."""
        return progress_state(self)

    def restore(self, model: MorphogeneticModel, optimizer: OptimizerState,
                state: dict[str, Any]) -> None:
        """Continue from a checkpoint's model, optimizer and trainer state (see
        :func:`~.progress.restore_progress`).

        Raises:
            CheckpointError: the trainer state is not one a run can continue from
                (see :func:`~esper.tolaria.progress.check_progress`); nothing changed.
        """
        restore_progress(self, model, optimizer, state)
        for slot in model.seed_slots.values():
            slot.on_telemetry = self._lifecycle_event
        self.parallel.check("the resumed checkpoint", self.config, model)
