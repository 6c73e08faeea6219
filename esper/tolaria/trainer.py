"""The trainer: epochs of compiled steps, telemetry, lifecycle and controller.

Per epoch: train (the compiled step; gradient norms folded into a moving
average at the telemetry stride, isolation probed at the same stride), then
validation accuracy, each blended slot's counterfactual contribution, one
``step`` for every slot, and the controller's decisions. Every random draw is
seeded from ``(seed, epoch)``, so a run is deterministic on CPU and a resumed
run continues exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import TaskData, batches
from ..kasmina.model import MorphogeneticModel
from ..kasmina.telemetry import GradientCapture, GradientEMA, due
from ..leyline import SeedStage, SlotTelemetry, TelemetryEvent
from ..tamiyo import ControllerMemory, Decision, HeuristicController
from .config import GrowConfig, build_host
from .evaluate import accuracy, counterfactuals
from .optim import HOST_GROUP, OptimizerState, SGDConfig
from .records import EpochRecord, SlotSnapshot
from .step import CompileCounter, build_step

_BLENDED = (SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
EventSink = Callable[[dict[str, Any]], None]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in ``epoch`` (data order, seed init, probes)."""
    return seed * 1_000_003 + epoch


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
    tally: dict[str, int] = field(default_factory=dict)
    events_written: int = 0

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
        self.counter = CompileCounter(self.config.compile_backend)
        self._step = build_step(self.config.compile, self.counter)

    # ------------------------------------------------------------------ events

    def _emit(self, record: dict[str, Any]) -> None:
        self.events_written += 1
        self.sink(record)

    def _lifecycle_event(self, event: TelemetryEvent) -> None:
        self.tally[event.type.value] = self.tally.get(event.type.value, 0) + 1
        self._emit({"kind": "lifecycle", **event.to_dict()})

    def _decision_event(self, decision: Decision, outcome: str) -> None:
        self._emit({"kind": "decision", "epoch": self.epoch, **decision.to_dict(),
                    "outcome": outcome})

    # ------------------------------------------------------------------ training

    def _telemetry_groups(self) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
        names = tuple(g for g in self.optimizer.groups if g != HOST_GROUP)
        groups = (self.optimizer.groups.get(HOST_GROUP, ()),
                  *(self.optimizer.groups[g] for g in names))
        return names, groups

    def train_epoch(self) -> tuple[float, GradientEMA | None]:
        """One pass over the training data; returns the mean loss and the gradient EMA."""
        model, cfg = self.model, self.config
        model.train()
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = dict(model.named_buffers())
        lrs = self.optimizer.learning_rates()
        names, groups = self._telemetry_groups()
        counts = tuple(sum(params[n].numel() for n in group) for group in groups)
        states = model.slot_states()
        seed = epoch_seed(cfg.seed, self.epoch)
        generator = torch.Generator().manual_seed(seed)
        probe_generator = torch.Generator().manual_seed(seed + 7)
        ema: GradientEMA | None = None
        losses = []
        x, y = self.data.train
        # Full batches only: a ragged last batch would compile a graph of its own.
        for index, (xb, yb) in enumerate(batches(x, y, min(cfg.batch_size, len(y)), shuffle=True,
                                                 generator=generator, drop_last=True)):
            loss, squared = self._step(model, params, buffers, self.optimizer.momenta, lrs,
                                       states, xb, yb, groups, self.optimizer.config.momentum,
                                       self.optimizer.config.weight_decay)
            losses.append(loss)
            if due(index, cfg.telemetry_stride) and names:
                sample = GradientCapture(names, squared, counts[0], counts[1:])
                ema = GradientEMA.start(sample) if ema is None else ema.update(sample)
                model.probe_isolation(xb, generator=probe_generator)
                states = model.slot_states()
        return float(torch.stack(losses).mean()), ema

    # ------------------------------------------------------------------ lifecycle

    def _apply(self, decision: Decision, telemetry: dict[str, SlotTelemetry]) -> None:
        slot = self.model.seed_slots[decision.slot]
        if decision.action == "germinate":
            assert decision.blueprint_id is not None and decision.seed_id is not None
            slot.germinate(decision.blueprint_id, decision.seed_id)
            outcome = "germinated"
        elif decision.action == "fossilize":
            result = slot.fossilize(telemetry[decision.slot])
            outcome = "fossilized" if result.passed else f"refused: {result.message}"
        else:
            slot.prune(decision.reason)
            outcome = "pruned"
        self._decision_event(decision, outcome)

    def end_epoch(self, loss: float, ema: GradientEMA | None, seconds: float) -> EpochRecord:
        """Validation, counterfactuals, lifecycle step and controller decisions."""
        model = self.model
        (vx, vy) = self.data.val
        val = accuracy(model, vx, vy)
        blended = [n for n, s in model.slot_states().items() if s.stage in _BLENDED]
        contributions = counterfactuals(model, vx, vy, blended, reference=val)
        if ema is not None:
            model.record_gradients(ema)
        finite = math.isfinite(loss) and math.isfinite(val)
        telemetry = {name: SlotTelemetry(val, contributions.get(name), finite=finite)
                     for name in model.seed_slots}
        model.step_epoch(telemetry)
        torch.manual_seed(epoch_seed(self.config.seed, self.epoch) + 11)  # seed initialisation
        decisions, self.memory = self.controller.decide(self.epoch, val, model.slot_states(),
                                                        self.memory)
        for decision in decisions:
            self._apply(decision, telemetry)
        self.optimizer = self.optimizer.synced(model)
        record = EpochRecord(self.epoch, loss, val, self._snapshots(contributions), seconds)
        self.records.append(record)
        return record

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

    # ------------------------------------------------------------------ persistence

    def trainer_state(self) -> dict[str, Any]:
        """JSON-ready progress for a checkpoint (weights and optimizer saved beside it)."""
        return {"epoch": self.epoch, "records": [r.to_dict() for r in self.records],
                "tally": dict(self.tally), "events_written": self.events_written,
                "controller": {"accuracies": list(self.memory.accuracies),
                               "germinations": dict(self.memory.germinations),
                               "seeds_created": self.memory.seeds_created}}

    def restore(self, model: MorphogeneticModel, optimizer: OptimizerState,
                state: dict[str, Any]) -> None:
        """Continue from a checkpoint's model, optimizer and trainer state."""
        for slot in model.seed_slots.values():
            slot.on_telemetry = self._lifecycle_event
        self.model, self.optimizer = model, optimizer
        self.epoch = int(state["epoch"])
        self.tally = {str(k): int(v) for k, v in state["tally"].items()}
        self.events_written = int(state["events_written"])
        self.records = [EpochRecord.from_dict(r) for r in state["records"]]
        memory = state["controller"]
        self.memory = ControllerMemory(tuple(memory["accuracies"]), dict(memory["germinations"]),
                                       int(memory["seeds_created"]))
