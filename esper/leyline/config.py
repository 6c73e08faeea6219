"""Gate thresholds and task timing: frozen, validated configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..validation import check_int, is_finite_real, is_int, is_real
from . import constants as C

Topology = Literal["cnn", "transformer", "mlp"]
"""A feature layout: ``cnn`` ``[B, C, H, W]``, ``transformer`` ``[B, T, C]``, ``mlp`` ``[B, C]``."""
TOPOLOGIES: tuple[Topology, ...] = ("cnn", "transformer", "mlp")


def _ceil(value: float) -> int:
    """Ceiling that ignores float noise: 0.28 * 25 is 7.000000000000001 but means 7."""
    return math.ceil(round(value, 9))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, slots=True)
class QualityGates:
    """Thresholds of the lifecycle gates.

    Attributes:
        probe_alpha: G2, the alpha at which a training seed is probed (in (0, 1]).
        min_probe_loss_reduction: G2, the relative validation-loss reduction the
            seed must give at ``probe_alpha`` against the host alone at its slot.
        min_blending_epochs: G3, epochs spent in BLENDING before HOLDING.
        min_seed_gradient_ratio: G2, parameter-normalised seed/host gradient ratio.
        alpha_complete_threshold: G3, alpha needed to leave BLENDING.
        min_fossilize_contribution: G5, counterfactual contribution in accuracy points,
            measured in HOLDING at full alpha.
        min_holding_epochs: G5, epochs spent in HOLDING before fossilization (>= 1).
        max_isolation_violations: G2, isolation probe violations tolerated.
    """

    probe_alpha: float = C.DEFAULT_PROBE_ALPHA
    min_probe_loss_reduction: float = C.DEFAULT_MIN_PROBE_LOSS_REDUCTION
    min_blending_epochs: int = C.DEFAULT_MIN_BLENDING_EPOCHS
    min_seed_gradient_ratio: float = C.DEFAULT_MIN_SEED_GRADIENT_RATIO
    alpha_complete_threshold: float = C.DEFAULT_ALPHA_COMPLETE_THRESHOLD
    min_fossilize_contribution: float = C.DEFAULT_MIN_FOSSILIZE_CONTRIBUTION
    min_holding_epochs: int = C.DEFAULT_MIN_HOLDING_EPOCHS
    max_isolation_violations: int = C.DEFAULT_MAX_ISOLATION_VIOLATIONS

    def __post_init__(self) -> None:
        for name in ("probe_alpha", "min_probe_loss_reduction", "min_seed_gradient_ratio",
                     "min_fossilize_contribution", "alpha_complete_threshold"):
            value = getattr(self, name)
            _require(is_finite_real(value),
                     f"QualityGates.{name} must be a finite number, got {value!r}")
        _require(0.0 < self.probe_alpha <= 1.0,
                 f"QualityGates.probe_alpha must lie in (0, 1], got {self.probe_alpha!r}")
        _require(0.0 < self.alpha_complete_threshold <= 1.0,
                 "QualityGates.alpha_complete_threshold must lie in (0, 1], "
                 f"got {self.alpha_complete_threshold!r}")
        for name in ("min_blending_epochs", "max_isolation_violations"):
            check_int(f"QualityGates.{name}", getattr(self, name), minimum=0)
        holding = self.min_holding_epochs
        _require(is_int(holding) and holding >= 1,
                 f"QualityGates.min_holding_epochs must be an int >= 1, got {holding!r}: "
                 "a seed is validated for at least one epoch in HOLDING")


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Timing of the lifecycle for one task.

    Attributes:
        topology: ``"cnn"`` or ``"mlp"`` (seeds isolated while blending) or
            ``"transformer"`` (host and seed co-adapt while blending).
        max_epochs: planned length of the run; the dwell and timeout scale with it.
        train_to_blend_fraction: share of ``max_epochs`` a seed trains before G2.
        blending_steps: epochs of the alpha ramp from 0 to 1.
        embargo_epochs: epochs a pruned slot rests before it is reset.
    """

    topology: Topology = "cnn"
    max_epochs: int = C.DEFAULT_MAX_EPOCHS
    train_to_blend_fraction: float = C.DEFAULT_TRAIN_TO_BLEND_FRACTION
    blending_steps: int = C.DEFAULT_BLENDING_STEPS
    embargo_epochs: int = C.DEFAULT_EMBARGO_EPOCHS

    def __post_init__(self) -> None:
        _require(self.topology in TOPOLOGIES,
                 f"TaskConfig.topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        for name in ("max_epochs", "blending_steps"):
            check_int(f"TaskConfig.{name}", getattr(self, name), minimum=1)
        check_int("TaskConfig.embargo_epochs", self.embargo_epochs, minimum=0)
        fraction = self.train_to_blend_fraction
        _require(is_real(fraction) and 0.0 <= fraction <= 1.0,
                 f"TaskConfig.train_to_blend_fraction must lie in [0, 1], got {fraction!r}")

    @property
    def training_dwell(self) -> int:
        """Epochs in TRAINING before G2 is evaluated: ``max(1, ceil(fraction * max_epochs))``."""
        return max(1, _ceil(self.train_to_blend_fraction * self.max_epochs))

    @property
    def holding_timeout(self) -> int:
        """Epochs in HOLDING before an undecided seed is pruned."""
        return max(C.DEFAULT_MIN_HOLDING_TIMEOUT_EPOCHS,
                   _ceil(C.DEFAULT_HOLDING_TIMEOUT_FRACTION * self.max_epochs))

    @property
    def isolate_while_blending(self) -> bool:
        """Whether the seed input stays detached from the host in BLENDING and HOLDING.

        ``cnn`` and ``mlp`` features are isolated; ``transformer`` host and seed co-adapt
        (the residual stream is shared by every later layer). A slot may override it.
        """
        return self.topology != "transformer"
