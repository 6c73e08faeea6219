"""What the training step reads for one topology, and the counters it feeds.

The trainer builds a :class:`StepInputs` at the start of an epoch and again
whenever a seed leaves mid-epoch (a seed that raised is pruned at once).
Everything in it lives on the device: the counters add up the step's flags
without a host sync, and :attr:`StepInputs.denied` mutes a misbehaving seed
from the next step on by a select on its alpha, also without a sync.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.state import SlotState
from .step import StepResult


@dataclass
class StepInputs:
    """The step's inputs for the model's current topology and its running counts.

    Attributes:
        names: the seed groups (slot names), in the step's group order.
        groups: parameter names per group: the host's, then one per seed.
        params: parameter name -> tensor aliasing the model's parameter.
        buffers: buffer name -> tensor (committed in place by the step).
        lrs: parameter name -> 0-d learning rate (zeroed for a denied seed).
        states: slot name -> the committed slot state.
        counts: parameter count of each group (for the gradient telemetry).
        watched: bool per seed group: blow-ups count (the seed is not fossilized).
        denied: bool per seed group: the seed misbehaved this epoch and is muted.
        faults: per seed group, steps with a non-finite activation or gradient.
        blowups: per seed group, steps whose alpha-weighted output swamped the host.
        skipped: per group (host first), updates skipped.
    """

    names: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    lrs: dict[str, Tensor]
    states: dict[str, SlotState]
    counts: tuple[int, ...]
    watched: Tensor
    denied: Tensor
    faults: Tensor
    blowups: Tensor
    skipped: Tensor

    def step_states(self) -> dict[str, SlotState]:
        """The states the step runs with: each denied seed's alpha selected to 0."""
        index = {name: i for i, name in enumerate(self.names)}
        return {name: state.muted(self.denied[index[name]]) if name in index else state
                for name, state in self.states.items()}

    def count(self, result: StepResult) -> None:
        """Add one step's flags to the counters and deny every seed that misbehaved."""
        self.faults += result.faults
        self.blowups += result.blowups
        self.skipped += ~result.updated
        self.denied |= result.faults | result.blowups


__all__ = ["StepInputs"]
