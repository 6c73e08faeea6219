"""The training step: forward, loss, backward and SGD update as one function.

Built on :meth:`MorphogeneticModel.functional_forward` and ``torch.func``, it
compiles with ``fullgraph=True`` into one graph per topology: every stage
change and every alpha is a tensor input, so only germinate and prune (new or
removed parameters) compile another graph. The step also returns the squared
gradient norm of each optimizer group (host, then each seed), computed in the
same graph, which the telemetry folds in at its stride without a host sync,
the host features at each seeded slot for the first few samples, which the
isolation probe reads instead of running the host again, and the flags of the
circuit breaker: which groups were updated and which seeds misbehaved.
Buffers are committed like parameters: only what a finite, healthy step produced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

import kernels

from ..core.state import SlotState
from ..nn.model import MorphogeneticModel
from ..ops.health import SeedHealth
from ..ops.isolation import ProbeSquares, probe_squares
from ..optim.sgd import HOST_GROUP, group_of, sgd_update


class StepResult(NamedTuple):
    """What one training step returns (all device tensors; nothing is synced).

    Attributes:
        loss: the batch loss (NaN or infinite when the step was skipped for it).
        squared: float32 squared gradient norm of each group (host, then each
            seed); empty when the step did not measure.
        features: slot name -> host features at that slot for the first few
            samples (for the isolation probe).
        updated: bool per group: its update was applied (finite loss, finite
            gradients, no fault of its seed, no blow-up of a watched seed).
        faults: bool per seed group: the seed produced a non-finite activation,
            or non-finite gradients under a finite loss.
        blowups: bool per seed group: a watched seed's alpha-weighted output
            swamped the host's activations at its slot (see
            :func:`~esper.ops.health.seed_health`); every group's update of
            that step was skipped.
    """

    loss: Tensor
    squared: Tensor
    features: dict[str, Tensor]
    updated: Tensor
    faults: Tensor
    blowups: Tensor


StepFn = Callable[..., StepResult]
# Data-parallel reduction of (gradients, loss, health flags); see tolaria/distributed.py.
StepReduce = Callable[[dict[str, Tensor], Tensor, dict[str, Tensor]],
                      tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]]


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


def group_finite(grads: Mapping[str, Tensor], groups: tuple[tuple[str, ...], ...]) -> Tensor:
    """Bool per group: every gradient in it is finite (one multi-tensor norm per group).

    The eager step's check when it does not measure: cheaper than the
    float64-accurate :func:`group_squares`, and a norm is finite exactly when
    every element is (or the values are too large to square, which is a
    failure too).
    """
    flags = [torch.stack(torch._foreach_norm([grads[n] for n in group])).sum().isfinite()
             if group else torch.ones((), dtype=torch.bool) for group in groups]
    return torch.stack(flags)


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
    feature_samples: int = 8,
    reduce: StepReduce | None = None,
    watched: Tensor | None = None,
) -> StepResult:
    """One SGD step; ``params``, ``momenta`` and ``buffers`` are updated in place.

    Nothing the step cannot vouch for is committed, the way AMP's gradient
    scaler skips steps, on the device and with no host sync:

    * a group whose gradients are not finite, or whose seed faulted, keeps its
      parameters and momenta bit-identical; a non-finite loss skips every group;
    * a blow-up of a watched seed skips every group (the forward was swamped);
    * buffers (BatchNorm statistics) are updated on copies and committed only
      where their group's update was applied and their new values are finite,
      so a non-finite forward never reaches the running statistics, and a
      forward that raises leaves them untouched.

    Arguments:
        model: the model (its modules provide the structure, ``params`` the values).
        params: parameter name -> tensor aliasing the model's parameter.
        buffers: buffer name -> tensor (updated in place when committed).
        momenta: parameter name -> momentum buffer.
        lrs: parameter name -> 0-d learning rate.
        states: slot name -> slot state.
        x, y: a batch.
        groups: parameter names per optimizer group: the host's first, then one
            per seeded slot (as :class:`~esper.optim.sgd.OptimizerState` groups them).
        momentum, weight_decay: SGD hyper-parameters.
        measure: compute the group norms; ``False`` returns an empty tensor in
            their place (and checks finiteness more cheaply).
        feature_samples: how many leading samples of the host features at each
            seeded slot to return (0 returns none).
        reduce: data-parallel training: averages gradients and loss and ORs the
            health flags over the ranks, before anything reads them
            (:meth:`esper.tolaria.distributed.Replicas.reduce_step`).
        watched: bool per seed group: whether that seed's blow-ups count (its
            seed is on probation, not fossilized). ``None`` watches every seed.

    Returns:
        A :class:`StepResult`; its features are this batch's, before the update.
    """
    seeds = [group_of(group[0]) for group in groups[1:]]

    def loss_of(p: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[Tensor, Any]:
        out = model.functional_forward(p, states, x, b, aux=True)
        # A copy, not a view: a view would keep the whole batch's features alive
        # until the next step, and the allocator would have to map fresh pages.
        kept = ({name: h[:feature_samples].clone() for name, h in out.features.items()}
                if feature_samples else {})
        flags = {f"{kind}:{name}": getattr(out.health[name], kind)
                 for name in seeds for kind in SeedHealth._fields}
        return task_loss(out.logits, y), (kept, flags)

    work = {name: b.clone() for name, b in buffers.items()}
    grads, (loss, (features, flags)) = torch.func.grad_and_value(
        loss_of, has_aux=True)(dict(params), work)
    if reduce is not None:
        grads, loss, flags = reduce(grads, loss, flags)
    squared = group_squares(grads, groups) if measure else loss.new_empty(0)
    finite = squared.isfinite() if measure else group_finite(grads, groups)
    loss_ok = loss.isfinite()
    faults = [flags[f"fault:{name}"] | (loss_ok & ~finite[i + 1]) for i, name in enumerate(seeds)]
    blowups = [flags[f"blowup:{name}"] & (True if watched is None else watched[i])
               for i, name in enumerate(seeds)]
    calm = ~torch.stack(blowups).any() if blowups else torch.ones_like(loss_ok)
    updated = [loss_ok & finite[0] & calm, *(loss_ok & finite[i + 1] & ~fault & calm
                                             for i, fault in enumerate(faults))]
    sgd_update(params, grads, momenta, lrs, momentum, weight_decay,
               {name: flag for flag, group in zip(updated, groups, strict=True) for name in group})
    commit_buffers(buffers, work, dict(zip((HOST_GROUP, *seeds), updated, strict=True)))
    none = loss_ok.new_zeros(0)
    return StepResult(loss.detach(), squared, features, torch.stack(updated),
                      torch.stack(faults) if faults else none,
                      torch.stack(blowups) if blowups else none)


def commit_buffers(buffers: Mapping[str, Tensor], updated: Mapping[str, Tensor],
                   ok: Mapping[str, Tensor]) -> None:
    """Copy each updated buffer into place where its group's flag holds and it is finite.

    A buffer whose group has no flag (a seed without parameters) follows the
    host's. A select, so a NaN candidate never leaks into a kept buffer.
    """
    with torch.no_grad():
        for name, buffer in buffers.items():
            flag = ok.get(group_of(name), ok[HOST_GROUP])
            new = updated[name]
            keep = flag & torch.isfinite(new).all() if new.is_floating_point() else flag
            buffer.copy_(torch.where(keep, new, buffer))


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


def _compiled(fn: Any, counter: CompileCounter | None) -> Any:
    # Each germinate or prune compiles one more graph for the same code; a long
    # run may see more topologies than dynamo's default limit allows. Shapes are
    # static (full batches only): dynamic=False keeps shapes seen by an earlier
    # compile of the same function (another model, another batch size) from
    # turning this one's graphs dynamic.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, fullgraph=True, dynamic=False,
                         backend=counter if counter is not None else CompileCounter())


def build_step(compile: bool, counter: CompileCounter | None = None) -> StepFn:
    """The training step, compiled (inductor, ``fullgraph=True``) or eager."""
    return _compiled(train_step, counter) if compile else train_step


def build_probe(compile: bool, counter: CompileCounter | None = None) -> ProbeSquares:
    """The isolation probe's arithmetic, compiled like the step or eager.

    Compiled, it is one small graph per seed (built at the seed's first probe);
    eagerly, a probe costs about a millisecond of per-op overhead, which on a
    small model is several percent of ten steps.
    """
    return _compiled(probe_squares, counter) if compile else probe_squares
