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
from typing import NamedTuple

import torch
from torch import Tensor

from ..core.state import SlotState
from ..leyline import SeedStage
from ..leyline.names import SLOT_PREFIX, is_stacked, slot_key
from ..nn.model import MorphogeneticModel
from ..optim.config import OptimizerConfig
from ..optim.state import Buffers, OptimizerState, decays, group_of

StepReduce = Callable[[dict[str, Tensor], Tensor, dict[str, Tensor]],
                      tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]]
"""Data-parallel reduction of (gradients, loss, health flags) inside the step
(:meth:`esper.tolaria.replicas.Replicas.reduce_step`)."""


class Tournament(NamedTuple):
    """A slot's candidates as the step sees them.

    Attributes:
        slot: the slot's name.
        live: the name of its ``[K]`` float buffer (1 for a candidate still in).
        stacked: the names of its stacked ``[K, ...]`` parameters.
    """

    slot: str
    live: str
    stacked: tuple[str, ...]


@dataclass(frozen=True)
class StepInputs:
    """One training step's inputs besides the batch; ``params``, ``buffers``,
    ``optim`` and ``loss_scale`` are updated in place.

    Attributes:
        params: parameter name -> tensor (aliasing the model's parameter in a trainer).
        buffers: buffer name -> tensor (committed in place by the step).
        optim: the optimizer's state: buffer kind -> parameter name -> tensor.
        lrs: each group's learning rate, a float32 vector in group order (an
            entry zeroed denies that seed its updates).
        lr_scale: 0-d float32 multiplier of every rate (the schedule's value,
            set before each step).
        states: slot name -> the slot state the forward runs with.
        groups: parameter names per optimizer group: the host's first, then one
            per seeded slot (as :class:`~esper.optim.OptimizerState` groups them).
        config: the optimizer (its kind and hyper-parameters are part of the graph).
        decayed: the parameters weight decay applies to (not norms and biases).
        watched: bool per seed group: whether that seed's blow-ups count (its
            seed is on probation, not fossilized). ``None`` watches every seed.
        loss_scale: fp16 only: float32 ``[scale, overflow-free steps]``; the
            loss is multiplied by the scale before the backward pass.
    """

    params: Mapping[str, Tensor]
    buffers: Mapping[str, Tensor]
    optim: Buffers
    lrs: Tensor
    lr_scale: Tensor
    states: Mapping[str, SlotState]
    groups: tuple[tuple[str, ...], ...]
    config: OptimizerConfig
    decayed: frozenset[str]
    watched: Tensor | None = None
    loss_scale: Tensor | None = None

    @classmethod
    def of(cls, model: MorphogeneticModel, optimizer: OptimizerState,
           loss_scale: Tensor | None = None) -> StepInputs:
        """The inputs for ``model``'s current topology, ``optimizer`` synced to it.

        The parameters alias the model's (the step trains the model), the
        learning rates are fresh tensors on the model's device (scale 1), and
        every seed but a fossilized one is watched.
        """
        order = optimizer.group_order()
        groups = tuple(optimizer.groups.get(g, ()) for g in order)
        states = model.slot_states()
        params = {k: v.detach() for k, v in model.named_parameters()}
        device = next(iter(params.values())).device if params else torch.device("cpu")
        return cls(
            params=params, buffers=dict(model.named_buffers()), optim=optimizer.buffers,
            lrs=torch.tensor([optimizer.config.lr_for(g) for g in order], dtype=torch.float32,
                             device=device),
            lr_scale=torch.ones((), dtype=torch.float32, device=device),
            states=states, groups=groups, config=optimizer.config,
            decayed=frozenset(n for n, p in params.items() if decays(n, p)),
            watched=torch.tensor([states[n].stage != SeedStage.FOSSILIZED for n in order[1:]],
                                 dtype=torch.bool, device=device),
            loss_scale=loss_scale)

    @property
    def tournaments(self) -> tuple[Tournament, ...]:
        """The seed groups that hold a tournament of candidates, in group order."""
        found = []
        for name, group in zip(self.seeds, self.groups[1:], strict=True):
            if self.states[name].in_tournament:
                live = f"{SLOT_PREFIX}{slot_key(name)}.seed.live"
                found.append(Tournament(name, live, tuple(n for n in group if is_stacked(n))))
        return tuple(found)

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
        autocast: the forward's autocast dtype (``torch.bfloat16``,
            ``torch.float16``); ``None`` runs it in the parameters' own.
    """

    measure: bool = True
    feature_samples: int = 8
    reduce: StepReduce | None = None
    autocast: torch.dtype | None = None


__all__ = ["StepInputs", "StepOptions", "StepReduce", "Tournament"]
