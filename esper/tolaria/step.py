"""The training step: forward, loss, backward and SGD update as one function.

Built on :meth:`MorphogeneticModel.functional_forward` and ``torch.func``, it
compiles with ``fullgraph=True`` into one graph per topology: every stage
change and every alpha is a tensor input, so only germinate and prune (new or
removed parameters) compile another graph. The step also returns the squared
gradient norm of each optimizer group (host, then each seed), computed in the
same graph, which the telemetry folds in at its stride without a host sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import kernels

from ..kasmina.model import MorphogeneticModel
from ..kasmina.state import SlotState
from .optim import sgd_update

StepFn = Callable[..., tuple[Tensor, Tensor]]


def task_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for classification ``[B, K]`` and language modelling ``[B, T, V]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def group_squares(grads: Mapping[str, Tensor], groups: tuple[tuple[str, ...], ...]) -> Tensor:
    """Float32 sum of squared gradients of each group.

    Inside a compiled graph these are plain reductions, which inductor fuses
    with the update that reads the same gradients (one pass over memory, Triton
    on CUDA); run eagerly, the multi-tensor kernel op does it in one launch.
    """
    if not torch.compiler.is_compiling():
        return kernels.group_squared_norms([[grads[n] for n in group] for group in groups])
    zero = next(iter(grads.values())).new_zeros((), dtype=torch.float32)
    return torch.stack([sum((grads[n].float().square().sum() for n in group), zero)
                        for group in groups])


def train_step(
    model: MorphogeneticModel,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    momenta: Mapping[str, Tensor],
    lrs: Mapping[str, Tensor],
    states: Mapping[str, SlotState],
    x: Tensor,
    y: Tensor,
    groups: tuple[tuple[str, ...], ...],
    momentum: float,
    weight_decay: float,
    measure: bool = True,
) -> tuple[Tensor, Tensor]:
    """One SGD step; ``params`` and ``momenta`` are updated in place.

    Arguments:
        model: the model (its modules provide the structure, ``params`` the values).
        params: parameter name -> tensor aliasing the model's parameter.
        buffers: buffer name -> tensor (BatchNorm statistics update in place).
        momenta: parameter name -> momentum buffer.
        lrs: parameter name -> 0-d learning rate.
        states: slot name -> slot state.
        x, y: a batch.
        groups: parameter names per telemetry group (host first, then each seed).
        momentum, weight_decay: SGD hyper-parameters.
        measure: compute the group norms; ``False`` returns an empty tensor in
            their place (the step without telemetry, for benchmarks).

    Returns:
        The loss and the float32 squared gradient norm of each group.
    """
    def loss_of(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        return task_loss(model.functional_forward(p, states, x, b), y)

    grads, loss = torch.func.grad_and_value(loss_of)(dict(params), dict(buffers))
    squared = group_squares(grads, groups) if measure else loss.new_empty(0)
    sgd_update(params, grads, momenta, lrs, momentum, weight_decay)
    return loss.detach(), squared


class CompileCounter:
    """A dynamo backend that counts the graphs it compiles and hands them on.

    Arguments:
        backend: the backend that compiles them (``"inductor"``, ``"aot_eager"``...).
    """

    def __init__(self, backend: str = "inductor") -> None:
        self.graphs = 0
        self.backend = torch._dynamo.lookup_backend(backend)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return self.backend(graph, example_inputs)


def build_step(compile: bool, counter: CompileCounter | None = None) -> StepFn:
    """The training step, compiled (inductor, ``fullgraph=True``) or eager."""
    if not compile:
        return train_step
    # Each germinate or prune compiles one more graph for the same code; a long
    # run may see more topologies than dynamo's default limit allows.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(train_step, fullgraph=True,
                         backend=counter if counter is not None else CompileCounter())
