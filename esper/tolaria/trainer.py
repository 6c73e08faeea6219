"""The trainer: epochs of compiled steps, telemetry, lifecycle and controller.

Per epoch: train (the compiled step; gradient norms folded into a moving
average at the telemetry stride, isolation probed at the same stride on the
host features the step returns), then validation accuracy, each blended
slot's counterfactual contribution, one ``step`` for every slot, and the
controller's decisions. Every random draw is
seeded from ``(seed, epoch)``, so a run is deterministic on CPU and a resumed
run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.breaker import BreakerState, BreakerStatus
from ..core.breaker import force as force_breaker
from ..data import TaskData, batches
from ..errors import CheckpointError, SeedRaisedError, describe
from ..leyline import SeedStage, SlotTelemetry, TelemetryEvent, is_blended
from ..leyline.constants import DEFAULT_MAX_BLEND_LOSS_RATIO
from ..nn.model import MorphogeneticModel
from ..ops.telemetry import GradientEMA, due
from ..optim.sgd import OptimizerState, SGDConfig
from ..tamiyo import ControllerMemory, Decision, HeuristicController
from . import breakers
from .commands import load_key_from_env, rejection_event
from .compiled import CompileCounter, build_probe, build_step
from .config import GrowConfig, build_host
from .culprit import seed_culprit
from .evaluate import Validation, validate
from .external import CommandSource, open_source, seed_mismatch
from .inputs import StepOptions, StepReduce
from .progress import check_progress
from .records import EpochRecord, SlotSnapshot
from .runconfig import config_record
from .seeding import epoch_seed, germination_seed, probe_seed
from .step import StepFn, StepResult
from .topology_run import TopologyRun

EXCEPTION = "exception"  # the prune reason of a seed that raised
EventSink = Callable[[dict[str, Any]], None]
_log = logging.getLogger("esper")


@dataclass
class Trainer:
    """Grows a model on a task; see the module docstring for one epoch's work."""

    config: GrowConfig
    data: TaskData
    sink: EventSink = field(default=lambda record: None)
    model: MorphogeneticModel = field(init=False)
    optimizer: OptimizerState = field(init=False)
    controller: HeuristicController = field(init=False)
    memory: ControllerMemory = field(default_factory=ControllerMemory)
    epoch: int = 0
    records: list[EpochRecord] = field(default_factory=list)
    counter: CompileCounter = field(init=False)
    probe_counter: CompileCounter = field(init=False)
    tally: dict[str, int] = field(default_factory=dict)
    events_written: int = 0
    global_step: int = 0
    breakers: dict[str, BreakerState] = field(init=False)
    commands: CommandSource | None = field(init=False, default=None)
    # The command source's read offset and replay memory as of the last poll (checkpointed).
    command_state: dict[str, Any] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        torch.manual_seed(epoch_seed(self.config.seed, 0))
        topology = self.data.topology
        slots = self.config.slots if self.config.max_seeds > 0 else ()
        self.model = MorphogeneticModel(
            build_host(self.data, self.config.width), slots=slots,
            task_config=self.config.task_config(topology), gates=self.config.gates,
            on_telemetry=self._lifecycle_event)
        self.optimizer = OptimizerState(SGDConfig(lr=self.config.lr)).synced(self.model)
        self.controller = HeuristicController(self.config.controller_config(topology))
        self.breakers = breakers.fresh(tuple(self.model.seed_slots), {})
        if self.config.commands is not None:
            self.commands = open_source(self.config.commands, load_key_from_env(),
                                        frozenset(self.model.seed_slots), self._lifecycle_event)
        self.counter = CompileCounter(self.config.compile_backend)
        self._step = build_step(self.config.compile, self.counter)
        self._eager_step = build_step(False)
        self.probe_counter = CompileCounter(self.config.compile_backend)
        self._probe = build_probe(self.config.compile, self.probe_counter)
        self._reduce: StepReduce | None = None

    # ------------------------------------------------------------------ events

    def _emit(self, record: dict[str, Any]) -> None:
        self.events_written += 1
        self.sink(record)

    def _lifecycle_event(self, event: TelemetryEvent) -> None:
        """Log a slot's, breaker's or command's event, stamped with the trainer's epoch.

        A slot stamps its own epoch counter, which moves only when the slots
        step at the end of an epoch: a seed pruned before that (its breaker
        tripped, it raised) would carry the previous epoch's number.
        """
        event = dataclasses.replace(event, epoch=self.epoch)
        self.tally[event.type.value] = self.tally.get(event.type.value, 0) + 1
        self._emit({"kind": "lifecycle", **event.to_dict()})

    def _decision_event(self, decision: Decision, outcome: str) -> None:
        self._emit({"kind": "decision", "epoch": self.epoch, **decision.to_dict(),
                    "outcome": outcome})

    # ------------------------------------------------------------------ training

    def _inputs(self) -> TopologyRun:
        """The steps' inputs and counters for the model's current topology."""
        return TopologyRun.start(self.model, self.optimizer)

    def _run_step(self, step: StepFn, run: TopologyRun, xb: torch.Tensor, yb: torch.Tensor,
                  measure: bool) -> StepResult:
        return step(self.model, run.step_inputs(), xb, yb,
                    StepOptions(measure=measure, reduce=self._reduce))

    def _guarded_step(self, run: TopologyRun, xb: torch.Tensor, yb: torch.Tensor,
                      measure: bool) -> StepResult | None:
        """The step, or ``None`` when a seed raised in it (that seed is then pruned).

        A seed that raises is untrusted code failing: nothing of that step is
        applied (the forward or backward raised before any update, and buffers
        are committed only at the end). Under ``torch.compile`` a raise inside
        the graph loses the seed's frames, so the step is re-run eagerly: if it
        passes there its update stands (the same function), if it raises again
        the seed is found from its frames. An error no seed raised is re-raised.
        """
        try:
            return self._run_step(self._step, run, xb, yb, measure)
        except Exception as error:
            culprit = seed_culprit(error, self.model.seed_slots)
            if culprit is None and self.config.compile:
                try:
                    result = self._run_step(self._eager_step, run, xb, yb, measure)
                    _log.warning("the compiled step raised %s; that step ran eagerly",
                                 describe(error))
                    return result
                except Exception as eager_error:
                    culprit, error = seed_culprit(eager_error, self.model.seed_slots), eager_error
            if culprit is None:
                raise error
            self._prune_raiser(culprit, error)
            return None

    def _survive(self, work: Callable[[], Any]) -> tuple[Any, bool]:
        """``work()``, pruning each seed that raises in it and trying again.

        Returns:
            What ``work`` returned and whether a seed was pruned on the way.

        Raises:
            Exception: what ``work`` raised when no seed raised it.
        """
        pruned = False
        while True:
            try:
                return work(), pruned
            except Exception as error:
                culprit = seed_culprit(error, self.model.seed_slots)
                if culprit is None:
                    raise
                self._prune_raiser(culprit, error)
                pruned = True

    def _prune_raiser(self, slot: str, error: BaseException) -> None:
        """Prune the seed in ``slot`` that raised ``error`` (reason ``exception``)."""
        seed_slot = self.model.seed_slots[slot]
        if seed_slot.state.stage == SeedStage.FOSSILIZED:
            raise error  # part of the host now: its failure is the host's
        seed_slot.prune(EXCEPTION, detail=describe(error))
        self.breakers[slot] = BreakerState(slot, seed_id=seed_slot.state.seed_id)
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
        run = self._inputs()
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
            result = self._guarded_step(run, xb, yb, measure=cfg.compile or probe)
            while result is None:  # a seed raised and was pruned: run the batch without it
                self._flush(run)
                run = self._inputs()
                ema = None  # its groups changed
                probe = probe and bool(run.names)
                result = self._guarded_step(run, xb, yb, measure=cfg.compile or probe)
            self.global_step += 1
            losses.append(result.loss)
            run.count(result)
            if probe:
                sample = run.capture(result)
                ema = GradientEMA.start(sample) if ema is None else ema.update(sample)
                _, pruned = self._survive(lambda r=result: model.probe_isolation(
                    features=r.features, generator=probe_generator, squares=self._probe))
                if pruned:
                    self._flush(run)
                    run, ema = self._inputs(), None
                    continue
                run.refresh(model.slot_states())
                self._look_at_faults(run)  # syncs, as the probe just did
        self._flush(run)
        values = torch.stack(losses)
        finite = values[values.isfinite()]  # skipped steps do not count
        return float(finite.mean() if finite.numel() else values.mean()), ema

    def _flush(self, run: TopologyRun) -> None:
        """Feed the run's counts into the breakers and report skipped updates (one sync)."""
        self._look_at_faults(run)
        self._report_skipped(("host", *run.names), run.skipped)
        run.skipped.zero_()

    # ------------------------------------------------------------------ circuit breakers

    def _look_at_faults(self, run: TopologyRun) -> None:
        """Feed the fault counts into the breakers (one sync) and reset them.

        A breaker that opens denies its seed: the seed's learning rates (tensor
        inputs of the step, so nothing recompiles) are zeroed for the epoch.
        """
        names = run.names
        if not names:
            return
        faults, blowups = run.faults.tolist(), run.blowups.tolist()
        counts = {n: f + b for n, f, b in zip(names, faults, blowups, strict=True)}
        reasons = {n: breakers.BLOWUP if b else breakers.NON_FINITE
                   for n, b in zip(names, blowups, strict=True)}
        run.faults.zero_()
        run.blowups.zero_()
        self.breakers, events = breakers.observe(self.breakers, counts, self.global_step,
                                                 self.epoch, self.config.breaker, reasons)
        for event in events:
            self._lifecycle_event(event)
        for slot in breakers.tripped(self.breakers):
            for name in self.optimizer.groups.get(slot, ()):
                if name in run.inputs.lrs:
                    run.inputs.lrs[name].zero_()

    def _report_skipped(self, groups: tuple[str, ...], skipped: torch.Tensor) -> None:
        counts = {g: n for g, n in zip(groups, skipped.tolist(), strict=True) if n}
        if counts:
            self._emit({"kind": "safety", "epoch": self.epoch, "skipped_updates": counts})

    def override_breaker(self, slot: str, status: BreakerStatus, reason: str) -> None:
        """Manually set ``slot``'s breaker (an event is emitted even if unchanged).

        Raises:
            ValueError: unknown slot or status.
        """
        if slot not in self.breakers:
            raise ValueError(f"unknown slot {slot!r}; slots are {list(self.breakers)}")
        self.breakers[slot], events = force_breaker(self.breakers[slot], status,
                                                   self.global_step, reason, epoch=self.epoch)
        for event in events:
            self._lifecycle_event(event)

    def _prune_tripped(self) -> None:
        """Prune every seed whose breaker is not CLOSED (with the reason it tripped for)."""
        for slot in breakers.tripped(self.breakers):
            seed = self.model.seed_slots[slot]
            if seed.state.has_seed and seed.state.stage is not SeedStage.FOSSILIZED:
                seed.prune(breakers.trip_reason(self.breakers[slot]))
            self.breakers[slot] = BreakerState(slot, seed_id=seed.state.seed_id)

    # ------------------------------------------------------------------ lifecycle

    def _apply_external(self, decision: Decision, telemetry: dict[str, SlotTelemetry]) -> None:
        """A verified command: one the lifecycle refuses changes nothing and is reported.

        A prune or fossilize naming another seed than the slot's is rejected
        (a ``COMMAND_REJECTED`` event, reason ``seed_mismatch``).
        """
        mismatch = seed_mismatch(decision, self.model.seed_slots[decision.slot].state)
        if mismatch is not None:
            self._lifecycle_event(rejection_event("seed_mismatch", mismatch, slot=decision.slot,
                                                seed_id=decision.seed_id))
            return
        try:
            self._apply(decision, telemetry)
        except (ValueError, RuntimeError) as exc:
            self._decision_event(decision, f"rejected: {exc}")

    def _apply(self, decision: Decision, telemetry: dict[str, SlotTelemetry]) -> None:
        slot = self.model.seed_slots[decision.slot]
        if decision.action == "germinate":
            assert decision.blueprint_id is not None and decision.seed_id is not None
            try:
                slot.germinate(decision.blueprint_id, decision.seed_id,
                               blend_algorithm_id=decision.blend_algorithm_id
                               or self.config.blend_algorithm)
            except SeedRaisedError as error:  # untrusted code: the run goes on without it
                self._decision_event(decision, f"failed: {error}")
                return
            self.breakers[decision.slot] = BreakerState(decision.slot, seed_id=decision.seed_id)
            outcome = "germinated"
        elif decision.action == "fossilize":
            result = slot.fossilize(telemetry[decision.slot])
            outcome = "fossilized" if result.passed else f"refused: {result.message}"
        else:
            slot.prune(decision.reason)
            outcome = "pruned"
        self._decision_event(decision, outcome)

    def end_epoch(self, loss: float, ema: GradientEMA | None, seconds: float) -> EpochRecord:
        """Validation, counterfactuals, lifecycle step and controller decisions.

        Seeds whose breaker tripped in the epoch are pruned first; a seed that
        raises during validation is pruned and validation runs again; a blended
        seed whose loss blows up against its host-alone counterfactual is pruned
        (reason ``blowup``) and validation runs again without it.
        """
        model = self.model
        self._prune_tripped()
        validation = self._measure()
        if ema is not None:
            model.record_gradients(ema)
        val = validation.accuracy
        contributions = validation.counterfactuals()
        probes = validation.probe_reductions()
        finite = math.isfinite(loss) and math.isfinite(val)
        telemetry = {name: SlotTelemetry(val, contributions.get(name), finite=finite,
                                         probe_loss_reduction=probes.get(name))
                     for name in model.seed_slots}
        self._lifecycle(val, telemetry)
        self.optimizer = self.optimizer.synced(model)
        record = EpochRecord(self.epoch, loss, val, self._snapshots(contributions), seconds)
        self.records.append(record)
        return record

    def _measure(self) -> Validation:
        """Validation with every seed that raises in it or blows up pruned (see end_epoch)."""
        while True:
            states = self.model.slot_states()
            blended = [n for n, s in states.items() if is_blended(s.stage)]
            probed = {n: s.gates.probe_alpha for n, s in states.items()
                      if s.stage == SeedStage.TRAINING}
            validation, _ = self._survive(lambda b=blended, p=probed: self._validate(b, p))
            ratio = DEFAULT_MAX_BLEND_LOSS_RATIO
            blown = [n for n in validation.blown_up(ratio)
                     if states[n].stage != SeedStage.FOSSILIZED]
            if not blown:
                return validation
            for name in blown:
                slot = self.model.seed_slots[name]
                slot.prune(breakers.BLOWUP, detail=(
                    f"validation loss {validation.model.mean_loss:.4g} is over {ratio:g} times "
                    f"the host-alone loss {validation.without[name].mean_loss:.4g} at the slot"))
                self.breakers[name] = BreakerState(name, seed_id=slot.state.seed_id)

    def _validate(self, blended: list[str], probed: dict[str, float]) -> Validation:
        """Validation of the model, of each ``blended`` slot without its seed and of each
        ``probed`` slot with its seed at the probe alpha.

        (:class:`~esper.tolaria.data_parallel.DataParallelTrainer` sums the counts
        and losses over the ranks instead.)
        """
        vx, vy = self.data.val
        return validate(self.model, vx, vy, blended, probed)

    def _lifecycle(self, val: float, telemetry: dict[str, SlotTelemetry]) -> None:
        """Step every slot, then apply the controller's decisions (or the commands').

        (:class:`~esper.tolaria.data_parallel.DataParallelTrainer` puts the whole
        outcome through one consensus collective instead.)
        """
        model = self.model
        model.step_epoch(telemetry)
        torch.manual_seed(germination_seed(self.config.seed, self.epoch))
        if self.commands is None:
            decisions, self.memory = self.controller.decide(self.epoch, val,
                                                            model.slot_states(), self.memory)
            for decision in decisions:
                self._apply(decision, telemetry)
        else:
            decisions = self.commands.poll()
            self.command_state = self.commands.state()
            for decision in decisions:
                self._apply_external(decision, telemetry)

    def _snapshots(self, contributions: dict[str, float]) -> tuple[SlotSnapshot, ...]:
        shots = []
        for name, state in self.model.slot_states().items():
            gate = state.last_gate
            shots.append(SlotSnapshot(
                slot=name, stage=state.stage.name, alpha=state.alpha_value,
                seed_id=state.seed_id, blueprint_id=state.blueprint_id,
                counterfactual=contributions.get(name),
                gradient_ratio=state.metrics.seed_gradient_norm_ratio,
                last_gate=None if gate is None else gate.message))
        return tuple(shots)

    def run_epoch(self) -> EpochRecord:
        """Train and close one epoch."""
        self.epoch += 1
        started = time.perf_counter()
        loss, ema = self.train_epoch()
        return self.end_epoch(loss, ema, time.perf_counter() - started)

    def close(self) -> None:
        """Release the command source, if any (the run calls it when it ends)."""
        if self.commands is not None:
            self.commands.close()

    # ------------------------------------------------------------------ persistence

    def trainer_state(self) -> dict[str, Any]:
        """JSON-ready progress for a checkpoint (weights and optimizer saved beside it).

        With an external controller it holds ``"commands"``: the read offset and
        the replay memory, so a resumed run refuses commands it already accepted.
        ``"config"`` is the run's configuration
        (:func:`~esper.tolaria.runconfig.config_record`), which ``--resume`` continues.
        """
        state = {"epoch": self.epoch, "records": [r.to_dict() for r in self.records],
                 "tally": dict(self.tally), "events_written": self.events_written,
                 "global_step": self.global_step,
                 "controller": {"accuracies": list(self.memory.accuracies),
                                "germinations": dict(self.memory.germinations),
                                "seeds_created": self.memory.seeds_created},
                 "config": config_record(self.config)}
        if self.command_state is not None:
            state["commands"] = self.command_state
        return state

    def restore(self, model: MorphogeneticModel, optimizer: OptimizerState,
                state: dict[str, Any]) -> None:
        """Continue from a checkpoint's model, optimizer and trainer state.

        Raises:
            CheckpointError: the trainer state is not one a run can continue from
                (see :func:`~esper.tolaria.progress.check_progress`); nothing changed.
        """
        state = check_progress(state)
        commands = state.get("commands")  # absent from older checkpoints: nothing remembered
        if commands is not None and self.commands is not None:
            try:
                self.commands.restore(commands)  # checks before it changes anything
            except ValueError as error:
                raise CheckpointError(f"checkpoint trainer state 'commands': {error}") from None
        for slot in model.seed_slots.values():
            slot.on_telemetry = self._lifecycle_event
        self.model, self.optimizer = model, optimizer
        self.epoch = int(state["epoch"])
        self.tally = {str(k): int(v) for k, v in state["tally"].items()}
        self.events_written = int(state["events_written"])
        self.global_step = int(state["global_step"])
        self.breakers = breakers.fresh(tuple(model.seed_slots),
                                       {n: s.state.seed_id for n, s in model.seed_slots.items()})
        self.records = list(state["records"])
        memory = state["controller"]
        self.memory = ControllerMemory(tuple(memory["accuracies"]), dict(memory["germinations"]),
                                       int(memory["seeds_created"]))
        self.command_state = commands
