"""Isolation, measured exactly: does gradient reach the host through the seed?

A host gradient is never a violation: the host trains by design, and the slot
formula sends it ``(1 - a)`` times the cotangent directly. A violation is
gradient reaching the host features *through the seed branch* while the slot
says it is isolated (``g = 1``). The probe runs outside the compiled step: it
takes the VJP of the slot output with respect to the host features for a
random cotangent and compares it with the direct-path prediction. The gate
network of a gated blend is probed separately and reported as ``gate_leak``,
never as a violation.

The arithmetic is :func:`probe_squares`, a pure tensor function that compiles
with ``fullgraph=True`` (the trainer compiles it beside its step: eagerly, a
probe of small features costs mostly per-operation overhead, which compiling
removes; ``bench/test_telemetry.py`` measures it); :func:`isolation_probe` draws
the cotangents, calls it and syncs once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.state import SlotState
from ..leyline.constants import DEFAULT_ISOLATION_TOLERANCE
from .formula import blend_weight

SlotFn = Callable[[Tensor, SlotState, Tensor], Tensor]
"""The slot output as ``slot_fn(host, state, a)``, the blend weight ``a`` given explicitly."""
GateFn = Callable[[Tensor, SlotState], Tensor]
"""A gated blend's effective weight as ``gate_fn(host, state)``."""
ProbeSquares = Callable[[SlotFn, GateFn | None, SlotState, Tensor, Tensor, Tensor], Tensor]
""":func:`probe_squares` or a compiled version of it."""


@dataclass(frozen=True, slots=True)
class IsolationReport:
    """The outcome of one probe.

    Attributes:
        isolated: whether the slot claims isolation (``g == 1``).
        leak: ``||vjp - (1 - a) v|| / ||v||`` for the random cotangent ``v``.
        gate_leak: the same measure for the gate network's path (0 without a gate).
        violated: ``isolated and leak > tolerance``.
    """

    isolated: bool
    leak: float
    gate_leak: float
    violated: bool


def vjp(fn: Callable[[Tensor], Tensor], primal: Tensor, cotangent: Tensor) -> Tensor:
    """The VJP of ``fn`` at ``primal`` for ``cotangent`` (zeros where ``fn`` ignores it).

    Eagerly ``torch.autograd.grad`` (the cheapest there); while compiling
    ``torch.func.vjp``, which dynamo traces into the graph.
    """
    if torch.compiler.is_compiling():
        _, pullback = torch.func.vjp(fn, primal)
        return pullback(cotangent)[0]
    h = primal.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(h), h, cotangent, allow_unused=True)
    return torch.zeros_like(h) if grad is None else grad


def _squares(*tensors: Tensor) -> Tensor:
    return torch.stack([t.double().square().sum() for t in tensors])


def probe_squares(slot_fn: SlotFn, gate_fn: GateFn | None, state: SlotState, host: Tensor,
                  v: Tensor, w: Tensor) -> Tensor:
    """Float64 ``[||leak||², ||v||², ||gate leak||², ||u||²]`` of one probe; pure, compilable.

    Arguments:
        slot_fn: the slot output with the blend weight given (see :data:`SlotFn`).
        gate_fn: the effective weight of a gated blend, or ``None``.
        state: the slot state (its ``alpha`` is the weight without a gate).
        host: host features at the slot (no grad needed).
        v: the cotangent of the slot output (``host``'s shape).
        w: random numbers of ``host``'s shape; summed to the gate output's
            shape they are the gate's cotangent ``u`` (unused without a gate).
    """
    host = host.detach()
    if gate_fn is None:
        a = blend_weight(state.alpha, host)
        gate = torch.zeros(2, dtype=torch.float64, device=host.device)
    else:
        a = gate_fn(host, state).detach()
        u = w.sum_to_size(a.shape)
        gate = _squares(vjp(lambda h: gate_fn(h, state), host, u), u)
    through_slot = vjp(lambda h: slot_fn(h, state, a), host, v)
    return torch.cat([_squares(through_slot - (1 - a) * v, v), gate])


def _normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like`` on its device, drawn on the generator's
    (a CPU generator draws the same numbers whatever device the features are on)."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return noise.to(like.device)


def _ratio(numerator: float, denominator: float) -> float:
    return (numerator / max(denominator, 1e-60)) ** 0.5


def isolation_probe(slot_fn: SlotFn, state: SlotState, host: Tensor, *,
                    gate_fn: GateFn | None = None,
                    tolerance: float = DEFAULT_ISOLATION_TOLERANCE,
                    generator: torch.Generator | None = None,
                    squares: ProbeSquares = probe_squares) -> IsolationReport:
    """Probe one slot on ``host`` features and measure the seed-branch leak (one sync).

    Arguments:
        slot_fn: the slot's own forward as ``slot_fn(host, state, a)`` with the
            blend weight ``a`` given explicitly (the gate is not applied inside).
        state: the slot's state (its ``alpha`` and ``g`` are read).
        host: host features at the slot (a few samples are enough).
        gate_fn: a gated blend's effective weight as ``gate_fn(host, state)``;
            its path to the host is probed and reported separately.
        tolerance: relative leak above which an isolated slot is in violation.
        generator: for the random cotangents.
        squares: :func:`probe_squares` or a compiled version of it.
    """
    v, w = _normal(host, generator), _normal(host, generator)
    leak2, v2, gate2, u2 = squares(slot_fn, gate_fn, state, host, v, w).tolist()
    isolated = bool(state.g.item() == 1.0)
    leak = _ratio(leak2, v2)
    gate_leak = _ratio(gate2, u2) if gate_fn is not None else 0.0
    return IsolationReport(isolated, leak, gate_leak, isolated and leak > tolerance)


def measure_leak(forward: Callable[[Tensor], Tensor], host: Tensor, a: Tensor,
                 generator: torch.Generator | None = None) -> float:
    """Relative difference between the host VJP of ``forward`` and ``(1 - a) * v``.

    Arguments:
        forward: the slot output as a function of the host features.
        host: host features (detached inside).
        a: the blend weight, broadcastable to ``host`` (the direct path is ``1 - a``).
        generator: for the random cotangent.
    """
    v = _normal(host, generator)
    difference = vjp(forward, host.detach(), v) - (1 - a.detach()) * v
    leak2, v2 = _squares(difference, v).tolist()
    return _ratio(leak2, v2)
