"""Alpha ramps: the scheduled blend weight after ``step`` of ``steps`` epochs."""

from __future__ import annotations

import math

from ..leyline.constants import BLEND_ALGORITHMS, DEFAULT_SIGMOID_STEEPNESS


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def alpha_at(algorithm_id: str, step: int, steps: int) -> float:
    """Scheduled alpha after ``step`` of ``steps`` blending epochs.

    Monotone in ``step``, clamped to [0, 1], exactly 0.0 at step 0 and exactly
    1.0 from ``step == steps`` on. ``"gated"`` follows the sigmoid ramp; its
    learned per-sample factor is applied inside the graph.

    Raises:
        ValueError: for an unknown algorithm or ``steps < 1``.
    """
    if algorithm_id not in BLEND_ALGORITHMS:
        raise ValueError(f"unknown blend algorithm {algorithm_id!r}; known: {BLEND_ALGORITHMS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if step <= 0:
        return 0.0
    if step >= steps:
        return 1.0
    t = step / steps
    if algorithm_id == "linear":
        return t
    k = DEFAULT_SIGMOID_STEEPNESS
    low, high = _sigmoid(-k / 2), _sigmoid(k / 2)
    value = (_sigmoid(k * (t - 0.5)) - low) / (high - low)
    return min(1.0, max(0.0, value))
