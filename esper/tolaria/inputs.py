"""What the training step reads: its inputs for one topology, and how it runs.

:class:`StepInputs` is everything one call of
:func:`~esper.tolaria.step.train_step` reads besides the batch. Its tensors
are inputs of the compiled graph (every stage, alpha and learning rate is a
tensor value, so none of them recompiles); its structure (parameter names,
groups, hyper-parameters) is what the graph is specialised on, so only a
germinate or a prune compiles another graph. :class:`StepOptions` says how the
step runs: what it measures and, in a data-parallel run, how the ranks reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.state import SlotState
from ..leyline import SeedStage
from ..nn.model import MorphogeneticModel
from ..optim.sgd import HOST_GROUP, OptimizerState, group_of

StepReduce = Callable[[dict[str, Tensor], Tensor, dict[str, Tensor]],
                      tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]]
"""Data-parallel reduction of (gradients, loss, health flags) inside the step
(:meth:`esper.tolaria.replicas.Replicas.reduce_step`)."""


@dataclass(frozen=True)
class StepInputs:
    """One training step's inputs besides the batch; ``params``, ``momenta`` and
    ``buffers`` are updated in place.

    Attributes:
        params: parameter name -> tensor (aliasing the model's parameter in a trainer).
        buffers: buffer name -> tensor (committed in place by the step).
        momenta: parameter name -> momentum buffer.
        lrs: parameter name -> 0-d learning rate (zeroed to deny a seed its updates).
        states: slot name -> the slot state the forward runs with.
        groups: parameter names per optimizer group: the host's first, then one
            per seeded slot (as :class:`~esper.optim.sgd.OptimizerState` groups them).
        momentum, weight_decay: SGD hyper-parameters.
        watched: bool per seed group: whether that seed's blow-ups count (its
            seed is on probation, not fossilized). ``None`` watches every seed.
    """

    params: Mapping[str, Tensor]
    buffers: Mapping[str, Tensor]
    momenta: Mapping[str, Tensor]
    lrs: Mapping[str, Tensor]
    states: Mapping[str, SlotState]
    groups: tuple[tuple[str, ...], ...]
    momentum: float
    weight_decay: float
    watched: Tensor | None = None

    @classmethod
    def of(cls, model: MorphogeneticModel, optimizer: OptimizerState) -> StepInputs:
        """The inputs for ``model``'s current topology, ``optimizer`` synced to it.

        The parameters alias the model's (the step trains the model), the
        learning rates are fresh tensors, and every seed but a fossilized one
        is watched.
        """
        seeds = [g for g in optimizer.groups if g != HOST_GROUP]
        groups = (optimizer.groups.get(HOST_GROUP, ()), *(optimizer.groups[g] for g in seeds))
        states = model.slot_states()
        config = optimizer.config
        return cls(
            params={k: v.detach() for k, v in model.named_parameters()},
            buffers=dict(model.named_buffers()), momenta=optimizer.momenta,
            lrs=optimizer.learning_rates(), states=states, groups=groups,
            momentum=config.momentum, weight_decay=config.weight_decay,
            watched=torch.tensor([states[n].stage != SeedStage.FOSSILIZED for n in seeds],
                                 dtype=torch.bool))

    @property
    def seeds(self) -> tuple[str, ...]:
        """The seed groups' slot names, in group order (the host's group is first)."""
        return tuple(group_of(group[0]) for group in self.groups[1:])


@dataclass(frozen=True)
class StepOptions:
    """How the step runs (not inputs of the graph: a change compiles another one).

    Attributes:
        measure: compute the group norms; ``False`` returns an empty tensor in
            their place (and checks finiteness more cheaply).
        feature_samples: how many leading samples of the host features at each
            seeded slot to return (0 returns none).
        reduce: data-parallel training: averages gradients and loss and ORs
            the health flags over the ranks, before anything reads them.
    """

    measure: bool = True
    feature_samples: int = 8
    reduce: StepReduce | None = None


__all__ = ["StepInputs", "StepOptions", "StepReduce"]
