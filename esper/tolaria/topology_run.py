"""The training steps on one topology: their inputs and the counters their results feed.

The trainer builds a :class:`TopologyRun` at the start of an epoch and again
whenever a seed leaves mid-epoch (a seed that raised is pruned at once).
Everything in it lives on the device: the counters add up the step's flags
without a host sync, and :attr:`TopologyRun.denied` mutes a misbehaving seed
from the next step on by a select on its alpha, also without a sync.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.state import SlotState
from ..core.tournament import candidate_id
from ..nn.model import MorphogeneticModel
from ..ops.telemetry import GradientCapture
from ..optim.config import HOST_GROUP
from ..optim.state import OptimizerState
from .breakers import BLOWUP, NON_FINITE
from .inputs import StepInputs
from .step import StepResult


@dataclass
class TopologyRun:
    """The step's inputs for the model's current topology and its running counts.

    Attributes:
        inputs: what every step reads (its states are the committed ones).
        names: the seed groups (slot names), in the step's group order.
        counts: parameter count of each group, host first (for the gradient telemetry).
        candidates: each tournament candidate's telemetry name (``"<slot>#<k>"``) and
            parameter count, in the order of the step's ``candidates`` norms.
        denied: bool per seed group: the seed misbehaved this epoch and is muted.
        faults: per seed group, steps with a non-finite activation or gradient.
        blowups: per seed group, steps whose alpha-weighted output swamped the host.
        skipped: per group (host first), updates skipped.
        scale: the learning-rate multiplier the inputs hold (see :meth:`schedule`).
    """

    inputs: StepInputs
    names: tuple[str, ...]
    counts: tuple[int, ...]
    denied: Tensor
    faults: Tensor
    blowups: Tensor
    skipped: Tensor
    scale: float = 1.0  # the value in inputs.lr_scale
    candidates: tuple[tuple[str, int], ...] = ()

    @classmethod
    def start(cls, model: MorphogeneticModel, optimizer: OptimizerState,
              loss_scale: Tensor | None = None) -> TopologyRun:
        """Fresh counters and the inputs of ``model`` (``optimizer`` synced to it; fp16's
        ``loss_scale`` carried on), on the model's device."""
        inputs = StepInputs.of(model, optimizer, loss_scale)
        names, device = inputs.seeds, inputs.lrs.device
        counts = tuple(sum(inputs.params[n].numel() for n in group) for group in inputs.groups)
        candidates = tuple(
            (candidate_id(t.slot, k), sum(inputs.params[n][k].numel() for n in t.stacked))
            for t in inputs.tournaments for k in range(inputs.params[t.stacked[0]].shape[0]))

        def zeros(n: int, dtype: torch.dtype) -> Tensor:
            return torch.zeros(n, dtype=dtype, device=device)

        return cls(inputs, names, counts, denied=zeros(len(names), torch.bool),
                   faults=zeros(len(names), torch.int64), blowups=zeros(len(names), torch.int64),
                   skipped=zeros(len(inputs.groups), torch.int64), candidates=candidates)

    def step_inputs(self) -> StepInputs:
        """The inputs the next step runs with: each denied seed's alpha selected to 0."""
        index = {name: i for i, name in enumerate(self.names)}
        states = {name: state.muted(self.denied[index[name]]) if name in index else state
                  for name, state in self.inputs.states.items()}
        return dataclasses.replace(self.inputs, states=states)

    def refresh(self, states: dict[str, SlotState]) -> None:
        """Run on with ``states`` (the same topology: the probes recorded new metrics)."""
        self.inputs = dataclasses.replace(self.inputs, states=states)

    def count(self, result: StepResult) -> None:
        """Add one step's flags to the counters and deny every seed that misbehaved."""
        self.faults += result.faults
        self.blowups += result.blowups
        self.skipped += ~result.updated
        self.denied |= result.faults | result.blowups

    def take_faults(self) -> tuple[dict[str, int], dict[str, str]]:
        """Per seed group, the steps that faulted or blew up since the last take, and the
        breaker reason of the count (:data:`~.breakers.BLOWUP` if any blew up); one sync,
        the counters reset."""
        faults, blowups = self.faults.tolist(), self.blowups.tolist()
        self.faults.zero_()
        self.blowups.zero_()
        counts = {n: f + b for n, f, b in zip(self.names, faults, blowups, strict=True)}
        reasons = {n: BLOWUP if b else NON_FINITE
                   for n, b in zip(self.names, blowups, strict=True)}
        return counts, reasons

    def take_skipped(self) -> dict[str, int]:
        """Group (``"host"`` or a slot) -> updates skipped since the last take, where any
        were; one sync, the counters reset."""
        groups = (HOST_GROUP, *self.names)
        counts = {g: n for g, n in zip(groups, self.skipped.tolist(), strict=True) if n}
        self.skipped.zero_()
        return counts

    def deny(self, slot: str) -> None:
        """Zero the learning rate of ``slot``'s seed for the rest of this run (no recompile:
        the rates are a tensor input of the step)."""
        if slot in self.names:
            self.inputs.lrs[1 + self.names.index(slot)] = 0.0

    def schedule(self, scale: float) -> None:
        """Set the multiplier of every learning rate for the next step (the schedule's
        value; written on the device in place, only when it changes: no sync, no
        recompile, and no kernel launch on a constant schedule)."""
        if scale != self.scale:
            self.inputs.lr_scale.fill_(scale)
            self.scale = scale

    def capture(self, result: StepResult) -> GradientCapture:
        """The gradient telemetry of a step that measured: its squared group norms, then
        each tournament candidate's (named ``"<slot>#<k>"``)."""
        names = self.names + tuple(name for name, _ in self.candidates)
        counts = self.counts[1:] + tuple(count for _, count in self.candidates)
        squared = torch.cat([result.squared, result.candidates])
        return GradientCapture(names, squared, self.counts[0], counts)


__all__ = ["TopologyRun"]
