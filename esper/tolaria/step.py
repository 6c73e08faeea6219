"""The training step: forward, loss, backward and optimizer update as one function.

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

from ..kernels import group_squared_norms
from ..leyline.constants import LOSS_SCALE_GROWTH_INTERVAL
from ..nn.model import MorphogeneticModel
from ..ops.health import SeedHealth
from ..optim.config import HOST_GROUP
from ..optim.state import group_of
from ..optim.update import masked_update
from .hardware import autocast
from .inputs import StepInputs, StepOptions, Tournament


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
        candidates: float32 squared gradient norm of each candidate of each
            tournament, in group order (empty when the step did not measure or
            no slot holds a tournament): the per-candidate gradient telemetry.
    """

    loss: Tensor
    squared: Tensor
    features: dict[str, Tensor]
    updated: Tensor
    faults: Tensor
    blowups: Tensor
    candidates: Tensor


StepFn = Callable[[MorphogeneticModel, StepInputs, Tensor, Tensor, StepOptions], StepResult]
""":func:`train_step` or a compiled version of it."""
DEFAULT_OPTIONS = StepOptions()
"""Measure the group norms, keep 8 samples of features, no data-parallel reduction."""


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
        return group_squared_norms([[grads[n] for n in group] for group in groups])
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
    device = next(iter(grads.values())).device if grads else None
    flags = [torch.stack(torch._foreach_norm([grads[n] for n in group])).sum().isfinite()
             if group else torch.ones((), dtype=torch.bool, device=device) for group in groups]
    return torch.stack(flags)


def train_step(model: MorphogeneticModel, inputs: StepInputs, x: Tensor, y: Tensor,
               options: StepOptions = DEFAULT_OPTIONS) -> StepResult:
    """One optimizer step on the batch ``(x, y)``; ``inputs``' parameters, optimizer
    state and buffers (and loss scale) are updated in place.

    Nothing the step cannot vouch for is committed, the way AMP's gradient
    scaler skips steps, on the device and with no host sync:

    * a group whose gradients are not finite, or whose seed faulted, keeps its
      parameters and optimizer state bit-identical; a non-finite loss skips every
      group, and so does an overflow of fp16's scaled gradients;
    * a blow-up of a watched seed skips every group (the forward was swamped);
    * buffers (BatchNorm statistics) are updated on copies and committed only
      where their group's update was applied and their new values are finite,
      so a non-finite forward never reaches the running statistics, and a
      forward that raises leaves them untouched.

    Arguments:
        model: the model (its modules provide the structure, ``inputs`` the values).
        inputs: parameters, buffers, optimizer state and slot states (see
            :class:`~esper.tolaria.inputs.StepInputs`).
        x, y: a batch.
        options: what the step measures and how the ranks reduce (see
            :class:`~esper.tolaria.inputs.StepOptions`).

    Returns:
        A :class:`StepResult`; its features are this batch's, before the update.
    """
    work = {name: b.clone() for name, b in inputs.buffers.items()}
    grads, loss, features, flags = _gradients(model, inputs, work, x, y, options)
    if options.reduce is not None:
        grads, loss, flags = options.reduce(grads, loss, flags)
    grads = settle_candidates(inputs, work, grads, loss)
    squared = group_squares(grads, inputs.groups) if options.measure else loss.new_empty(0)
    candidates = (candidate_squares(grads, inputs.tournaments) if options.measure
                  else loss.new_empty(0))
    finite = squared.isfinite() if options.measure else group_finite(grads, inputs.groups)
    overflow = None
    if inputs.loss_scale is not None:  # an overflow anywhere skips the step, nobody's fault
        overflow = loss.isfinite() & ~finite.all()
        _rescale(inputs.loss_scale, overflow)
    updated, faults, blowups = _verdict(loss, finite, flags, inputs.seeds, inputs.watched,
                                        overflow)
    masked_update(inputs.config, inputs.params, grads, inputs.optim, inputs.groups,
                  [lr * inputs.lr_scale for lr in inputs.lrs.unbind()],
                  inputs.decayed, updated)
    commit_buffers(inputs.buffers, work,
                   dict(zip((HOST_GROUP, *inputs.seeds), updated, strict=True)))
    none = updated[0].new_zeros(0)
    return StepResult(loss.detach(), squared, features, torch.stack(updated),
                      torch.stack(faults) if faults else none,
                      torch.stack(blowups) if blowups else none, candidates)


def candidate_squares(grads: Mapping[str, Tensor], tournaments: tuple[Tournament, ...]) -> Tensor:
    """Float32 squared gradient norm of each candidate (the rows of each tournament's stacked
    gradients), tournaments in group order; empty without one."""
    rows = [sum(grads[n].float().square().flatten(1).sum(1) for n in t.stacked)
            for t in tournaments]
    zero = next(iter(grads.values())).new_zeros(0, dtype=torch.float32)
    return torch.cat(rows) if rows else zero


def settle_candidates(inputs: StepInputs, work: Mapping[str, Tensor], grads: dict[str, Tensor],
                      loss: Tensor) -> dict[str, Tensor]:
    """Drop, on the device, every candidate that went non-finite in this step, and zero the
    gradients of the dropped ones: the gradients with those rows zeroed (the others kept).

    A candidate goes when its weights are not finite, or, under a finite loss and
    without fp16's loss scale (whose overflows are nobody's fault), when its
    gradients are not (its output reaches nothing while it incubates, so it is not
    read: see :mod:`esper.ops.candidates`). Its ``live`` entry becomes 0 in place, in the buffer
    and in its working copy ``work`` (which the step commits later: a drop is never
    undone; the trainer reads it at the epoch's end), and its rows of the stacked
    gradients become 0,
    so its weights are never updated with a non-finite gradient and the other
    candidates' update goes on.
    """
    tournaments = inputs.tournaments
    if not tournaments:
        return grads
    grads = dict(grads)
    with torch.no_grad():
        for _, live_name, stacked in tournaments:
            live = inputs.buffers[live_name]
            bad = ~torch.stack([inputs.params[n].flatten(1).isfinite().all(1)
                                for n in stacked]).all(0)
            if inputs.loss_scale is None:
                finite = torch.stack([grads[n].flatten(1).isfinite().all(1)
                                      for n in stacked]).all(0)
                bad = bad | (loss.isfinite() & ~finite)
            keep = (live > 0) & ~bad
            live.copy_(keep.to(live.dtype))
            work[live_name].copy_(live)
            for name in stacked:
                rows = keep.view(-1, *([1] * (grads[name].dim() - 1)))
                grads[name] = torch.where(rows, grads[name], 0.0)
    return grads


def _rescale(scale: Tensor, overflow: Tensor) -> None:
    """The dynamic loss scale's update, in place: halve on an overflow, double after
    :data:`LOSS_SCALE_GROWTH_INTERVAL` steps without one (``scale`` = [value, steps])."""
    with torch.no_grad():
        steps = torch.where(overflow, 0.0, scale[1] + 1)
        grow = steps >= LOSS_SCALE_GROWTH_INTERVAL
        value = torch.where(overflow, scale[0] * 0.5, torch.where(grow, scale[0] * 2, scale[0]))
        scale.copy_(torch.stack([value, torch.where(grow, 0.0, steps)]))


def _gradients(model: MorphogeneticModel, inputs: StepInputs, buffers: dict[str, Tensor],
               x: Tensor, y: Tensor, options: StepOptions
               ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Gradients and loss of the batch, the kept features and the seeds' health flags.

    The forward runs under ``options.autocast``; with a loss scale, the
    backward runs on the scaled loss and the gradients are unscaled here.
    The flags are keyed ``"fault:<slot>"`` and ``"blowup:<slot>"``, one flat
    dict of 0-d tensors, as the data-parallel reduction takes them.
    """
    samples, scale = options.feature_samples, inputs.loss_scale

    def loss_of(p: dict[str, Tensor], b: dict[str, Tensor]) -> tuple[Tensor, Any]:
        with autocast(x.device, options.autocast):
            out = model.functional_forward(p, inputs.states, x, b, aux=True)
            loss = task_loss(out.logits, y)
        # A copy, not a view: a view would keep the whole batch's features alive
        # until the next step, and the allocator would have to map fresh pages.
        kept = {name: h[:samples].clone() for name, h in out.features.items()} if samples else {}
        flags = {f"{kind}:{name}": getattr(out.health[name], kind)
                 for name in inputs.seeds for kind in SeedHealth._fields}
        scaled = loss if scale is None else loss.float() * scale[0]
        return scaled, (loss.detach(), kept, flags)

    grads, (_, (loss, features, flags)) = torch.func.grad_and_value(
        loss_of, has_aux=True)(dict(inputs.params), buffers)
    if scale is not None:
        inverse = scale[0].reciprocal()
        grads = {name: g * inverse for name, g in grads.items()}
    return grads, loss, features, flags


def _verdict(loss: Tensor, finite: Tensor, flags: Mapping[str, Tensor],
             seeds: tuple[str, ...], watched: Tensor | None, overflow: Tensor | None = None
             ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per group, whether its update applies; per seed, its fault and blow-up flags.

    Arguments:
        loss: the (reduced) batch loss.
        finite: bool per group: its gradients are finite.
        flags: the (reduced) health flags of :func:`_gradients`.
        seeds: the seed groups' slot names.
        watched: bool per seed: its blow-ups count (``None``: every seed's).
        overflow: the loss-scaled gradients overflowed: every group is skipped
            and no seed's non-finite gradients count as its fault.
    """
    loss_ok = loss.isfinite()
    faults = [flags[f"fault:{name}"] | (loss_ok & ~finite[i + 1]) for i, name in enumerate(seeds)]
    if overflow is not None:
        loss_ok = loss_ok & ~overflow
        faults = [flags[f"fault:{name}"] for name in seeds]
    blowups = [flags[f"blowup:{name}"] & (True if watched is None else watched[i])
               for i, name in enumerate(seeds)]
    calm = ~torch.stack(blowups).any() if blowups else torch.ones_like(loss_ok)
    updated = [loss_ok & finite[0] & calm, *(loss_ok & finite[i + 1] & ~fault & calm
                                             for i, fault in enumerate(faults))]
    return updated, faults, blowups


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
