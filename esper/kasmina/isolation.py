"""Isolation, measured exactly: does gradient reach the host through the seed?

A host gradient is never a violation: the host trains by design, and the slot
formula sends it ``(1 - a)`` times the cotangent directly. A violation is
gradient reaching the host features *through the seed branch* while the slot
says it is isolated (``g = 1``). The probe runs outside the compiled step: it
takes the VJP of the slot output with respect to the host features for a
random cotangent and compares it with the direct-path prediction. The gate
network of a gated blend is probed separately and reported as ``gate_leak``,
never as a violation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..leyline.constants import DEFAULT_ISOLATION_TOLERANCE
from .ops import blend_weight
from .state import SlotState


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


def _relative(difference: Tensor, cotangent: Tensor) -> float:
    scale = float(torch.linalg.vector_norm(cotangent.double()))
    return float(torch.linalg.vector_norm(difference.double())) / max(scale, 1e-30)


def measure_leak(forward: Callable[[Tensor], Tensor], host: Tensor, a: Tensor,
                 generator: torch.Generator | None = None) -> float:
    """Relative difference between the host VJP of ``forward`` and ``(1 - a) * v``.

    Arguments:
        forward: the slot output as a function of the host features.
        host: host features (detached inside).
        a: the blend weight, broadcastable to ``host`` (the direct path is ``1 - a``).
        generator: for the random cotangent.
    """
    h = host.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward(h)
        v = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        (vjp,) = torch.autograd.grad(out, h, v, allow_unused=True)
    vjp = torch.zeros_like(h) if vjp is None else vjp
    return _relative(vjp - (1 - a.detach()) * v, v)


SlotFn = Callable[[Tensor, Tensor], Tensor]
GateFn = Callable[[Tensor], Tensor]


def isolation_probe(slot_fn: SlotFn, state: SlotState, host: Tensor, *,
                    gate_fn: GateFn | None = None,
                    tolerance: float = DEFAULT_ISOLATION_TOLERANCE,
                    generator: torch.Generator | None = None) -> IsolationReport:
    """Probe one slot: run its forward on ``host`` features and measure the seed-branch leak.

    Arguments:
        slot_fn: the slot's own forward as ``slot_fn(host, a)`` with the blend
            weight ``a`` given explicitly (the gate is not applied inside).
        state: the slot's state (its ``alpha`` and ``g`` are read).
        host: host features at the slot (a few samples are enough).
        gate_fn: a gated blend's effective weight as a function of the host
            features; its path to the host is probed and reported separately.
        tolerance: relative leak above which an isolated slot is in violation.
        generator: for the random cotangents.
    """
    isolated = bool(state.g.item() == 1.0)
    gate_leak = 0.0
    if gate_fn is None:
        a = blend_weight(state.alpha, host)
    else:
        h = host.detach().requires_grad_(True)
        with torch.enable_grad():
            a_gated = gate_fn(h)
            u = torch.randn(a_gated.shape, generator=generator, dtype=a_gated.dtype,
                            device=a_gated.device)
            (through_gate,) = torch.autograd.grad(a_gated, h, u, allow_unused=True)
        gate_leak = 0.0 if through_gate is None else _relative(through_gate, u)
        a = a_gated.detach()
    leak = measure_leak(lambda h: slot_fn(h, a), host, a, generator)
    return IsolationReport(isolated, leak, gate_leak, isolated and leak > tolerance)
