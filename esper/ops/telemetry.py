"""Gradient telemetry: capture on the device without a host sync, materialize once.

``capture`` computes the squared gradient norm of the host and of each seed in
one multi-tensor pass (:func:`esper.kernels.group_squared_norms`) and returns device
tensors only. ``GradientEMA`` folds captures into a bias-corrected moving
average, still on the device. ``materialize`` performs the single host sync and
turns the result into Python numbers and the G2 gradient-activity ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.state import SlotState
from ..kernels import group_squared_norms
from ..leyline import SlotTelemetry
from ..leyline.constants import (
    DEFAULT_MAX_GRADIENT_RATIO,
    DEFAULT_TELEMETRY_EMA_DECAY,
    DEFAULT_TELEMETRY_STRIDE,
)
from ..validation import check_int
from .isolation import IsolationReport

_EPS = 1e-12


@dataclass(frozen=True)
class GradientCapture:
    """Squared gradient norms of one step, still on the device.

    Attributes:
        slots: slot names, in the order of ``squared[1:]``.
        squared: float32 ``[1 + len(slots)]``: host, then each seed.
        host_params: number of host parameter elements.
        seed_params: number of parameter elements of each seed (gate included).
    """

    slots: tuple[str, ...]
    squared: Tensor
    host_params: int
    seed_params: tuple[int, ...]


@dataclass(frozen=True)
class GradientStats:
    """Materialized gradient activity of one seed."""

    host_norm: float
    seed_norm: float
    ratio: float


@dataclass(frozen=True, slots=True)
class GradientReport:
    """What one eager telemetry capture measured for a slot (see
    :meth:`~esper.nn.slot.SeedSlot.capture_gradient_telemetry`)."""

    gradients: GradientStats
    isolation: IsolationReport | None


def _gradients(params: Iterable[Tensor]) -> tuple[list[Tensor], int]:
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]  # None gradients are skipped
    return grads, sum(p.numel() for p in params)


def capture(host_params: Iterable[Tensor],
            seed_params_by_slot: Mapping[str, Iterable[Tensor]]) -> GradientCapture:
    """Squared gradient norms of the host and each seed, in one pass, no host sync.

    Arguments:
        host_params: the host's parameters (their ``.grad`` is read).
        seed_params_by_slot: slot name -> that seed's parameters (gate included).
    """
    host_grads, host_count = _gradients(host_params)
    names, groups, counts = [], [host_grads], []
    for name, params in seed_params_by_slot.items():
        grads, count = _gradients(params)
        names.append(name)
        groups.append(grads)
        counts.append(count)
    squared = group_squared_norms(groups)
    return GradientCapture(tuple(names), squared, host_count, tuple(counts))


def gradient_ratio(seed_norm: float, host_norm: float, seed_params: int, host_params: int,
                   cap: float = DEFAULT_MAX_GRADIENT_RATIO) -> float:
    """``(seed_norm / host_norm) * sqrt(host_params / seed_params)``, capped at ``cap``.

    Parameter-normalised so a small seed and a large host compare fairly; 0
    when the host norm is ~0 or the seed has no parameters, ``cap`` for a
    non-finite result.
    """
    if host_norm <= _EPS or seed_params == 0 or host_params == 0:
        return 0.0
    ratio = (seed_norm / host_norm) * math.sqrt(host_params / seed_params)
    return min(ratio, cap) if math.isfinite(ratio) else cap


@dataclass(frozen=True)
class GradientEMA:
    """Bias-corrected exponential moving average of squared norms, on the device.

    Update by returning a new value (:meth:`update`); nothing syncs until
    :func:`materialize`.
    """

    slots: tuple[str, ...]
    total: Tensor
    count: int
    host_params: int
    seed_params: tuple[int, ...]
    decay: float = DEFAULT_TELEMETRY_EMA_DECAY

    @classmethod
    def start(cls, first: GradientCapture,
              decay: float = DEFAULT_TELEMETRY_EMA_DECAY) -> GradientEMA:
        """An average holding one capture."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        total = (1.0 - decay) * first.squared
        return cls(first.slots, total, 1, first.host_params, first.seed_params, decay)

    def update(self, sample: GradientCapture) -> GradientEMA:
        """The average with ``sample`` folded in (same slots, no sync)."""
        if sample.slots != self.slots:
            raise ValueError(f"capture of slots {sample.slots} cannot join an average of "
                             f"{self.slots}: start a new one after germinate or prune")
        total = self.decay * self.total + (1.0 - self.decay) * sample.squared
        return GradientEMA(self.slots, total, self.count + 1, sample.host_params,
                           sample.seed_params, self.decay)

    def corrected(self) -> Tensor:
        """The bias-corrected average of squared norms (device tensor)."""
        return self.total / (1.0 - self.decay ** self.count)


def materialize(source: GradientCapture | GradientEMA,
                cap: float = DEFAULT_MAX_GRADIENT_RATIO) -> dict[str, GradientStats]:
    """The one host sync: slot name -> norms and gradient ratio as Python numbers."""
    squared = source.corrected() if isinstance(source, GradientEMA) else source.squared
    values = squared.detach().to("cpu", torch.float64).tolist()
    host_norm = math.sqrt(max(values[0], 0.0))
    stats = {}
    for name, value, count in zip(source.slots, values[1:], source.seed_params, strict=True):
        seed_norm = math.sqrt(max(value, 0.0))
        stats[name] = GradientStats(host_norm, seed_norm, gradient_ratio(
            seed_norm, host_norm, count, source.host_params, cap))
    return stats


def due(step: int, stride: int = DEFAULT_TELEMETRY_STRIDE) -> bool:
    """Whether telemetry runs at training step ``step`` (0-based) for ``stride``."""
    if stride < 1:
        raise ValueError(f"telemetry stride must be >= 1, got {stride}")
    return step % stride == 0


def record(state: SlotState, *, seed_gradient_norm_ratio: float | None = None,
           isolation_violations: int = 0) -> SlotState:
    """The state with new gradient measurements in its metrics (no epoch passes).

    Arguments:
        state: the slot's state.
        seed_gradient_norm_ratio: the latest ratio (kept as is when ``None``).
        isolation_violations: probes that leaked since the last record (added).

    Raises:
        ValueError: a negative count or a non-finite ratio.
    """
    check_int("isolation_violations", isolation_violations, minimum=0)
    ratio = seed_gradient_norm_ratio
    if ratio is not None and not math.isfinite(ratio):
        raise ValueError(f"seed_gradient_norm_ratio must be finite, got {ratio!r}")
    m = state.metrics
    return state.replace(metrics=m.replace(
        seed_gradient_norm_ratio=m.seed_gradient_norm_ratio if ratio is None else float(ratio),
        isolation_violations=m.isolation_violations + isolation_violations))


def latest_telemetry(state: SlotState) -> SlotTelemetry:
    """The telemetry ``state``'s metrics last recorded (accuracy 0 before any epoch)."""
    m = state.metrics
    return SlotTelemetry(m.current_accuracy if m.current_accuracy is not None else 0.0,
                         m.counterfactual_contribution, m.seed_gradient_norm_ratio)
