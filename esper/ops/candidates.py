"""The slot formula with K candidate seeds: incubation and scoring.

While a tournament runs (GERMINATED and TRAINING) the slot is in the stages
where DESIGN.md's formula has ``a = 0``, ``b = 1``, ``g = 1``: the output is
exactly the host's, and a seed learns only from the straight-through term.
With K candidates ``s_k = seed_k(isolate(host))``, stacked ``[K, *host.shape]``:

    out       = host                                    (exactly: a select)
    d out/d s_k = live_k * (a + b) * cotangent          (each candidate's own STE term)
    d out/d host = (1 - a) * cotangent                  (what one isolated seed gives)

so each live candidate receives exactly the gradient it would receive alone,
and the host receives exactly what it would with one isolated seed (``g = 1``:
no gradient through any candidate). ``live`` (``[K]``, 1 or 0) marks the
candidates still in the tournament: a dropped one gets no gradient.

Nothing reads the candidates' outputs while they incubate: their values never
reach the host (``a = 0``), so the slot reports no fault (a candidate whose
weights or gradients stop being finite is dropped by the training step, see
:func:`~esper.tolaria.step.settle_candidates`), and compiled, the outputs are
never even computed: only what their weights' gradients need is (on the CNN, a
tournament of 4 ``norm`` candidates then costs what one seed does).

Scoring (:func:`candidates_probe`) replaces the alpha: the batch holds K
copies of the same samples and candidate ``k`` is blended at that alpha into
copy ``k`` only, so one forward measures every candidate's counterfactual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.state import SlotState
from .formula import _check_seed_output, _Isolate, blend_weight
from .health import SeedHealth

CandidatesFn = Callable[[Tensor], Tensor]
"""All K candidates on one input: ``[*x.shape] -> [K, *x.shape]``."""


class _Incubate(torch.autograd.Function):
    """Forward: a view of ``host``. Backward: the cotangent to the host times
    ``1 - a`` and to candidate ``k`` times ``live_k * (a + b)`` (zeros, selected,
    where ``live_k`` is 0)."""

    @staticmethod
    def forward(host: Tensor, seeds_out: Tensor, a: Tensor, b: Tensor, live: Tensor) -> Tensor:
        return host.view_as(host)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        _host, seeds_out, a, b, live = inputs
        ctx.save_for_backward(a, b, live)
        ctx.rank = seeds_out.dim()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b, live = ctx.saved_tensors
        grad_host = grad * (1 - a) if ctx.needs_input_grad[0] else None
        grad_seeds = None
        if ctx.needs_input_grad[1]:
            kept = live.view(-1, *([1] * (ctx.rank - 1))) > 0
            grad_seeds = torch.where(kept, (grad * (a + b)).unsqueeze(0), 0.0)
        return grad_host, grad_seeds, None, None, None


def candidates_forward(state: SlotState, seeds_fn: CandidatesFn, host: Tensor,
                       live: Tensor) -> tuple[Tensor, SeedHealth]:
    """The incubation formula (module docstring) and the slot's health.

    Arguments:
        state: the slot state (GERMINATED or TRAINING: ``a = 0``).
        seeds_fn: every candidate on the isolated features.
        host: the features at the slot.
        live: ``[K]`` float, 1 for a candidate still in the tournament.

    Returns:
        The host's features (a view: exactly their values) and the slot's
        :class:`~esper.ops.health.SeedHealth`, which is clear: the candidates'
        outputs reach nothing (see the module docstring).
    """
    host = host.view_as(host)
    a = blend_weight(state.alpha, host)
    seeds_out = _stacked_output(seeds_fn(_Isolate.apply(host, state.g)), host)
    out = _Incubate.apply(host, seeds_out, a, state.b, live)
    clear = torch.zeros((), dtype=torch.bool, device=host.device)
    return out, SeedHealth(clear, clear)


def candidates_probe(state: SlotState, chunked_fn: CandidatesFn, host: Tensor,
                     alpha: Tensor) -> Tensor:
    """Scoring: ``lerp(host, s, alpha)`` where ``s`` runs candidate ``k`` on the ``k``-th
    of K equal chunks of the batch, and exactly ``host`` where ``alpha`` is 0.

    Arguments:
        state: the slot state (its ``g`` isolates the candidates' input).
        chunked_fn: ``x -> s`` of ``x``'s shape, candidate ``k`` on chunk ``k``.
        host: the features of K copies of a batch, ``[K * B, ...]``.
        alpha: the probe's blend weight (0-d, per-sample or per-channel).
    """
    a = blend_weight(alpha, host)
    seeds_out = chunked_fn(_Isolate.apply(host, state.g))
    _check_seed_output(seeds_out, host)
    return torch.where(a != 0, torch.lerp(host, seeds_out.to(host.dtype), a), host)


def _stacked_output(seeds_out: Tensor, host: Tensor) -> Tensor:
    _check_seed_output(seeds_out[0], host)
    return seeds_out.to(host.dtype)


__all__ = ["CandidatesFn", "candidates_forward", "candidates_probe"]
