"""Gate levels and the structured result of a gate evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from .stages import SeedStage


class GateLevel(IntEnum):
    """The quality gate guarding entry into a stage."""

    G0 = 0  # -> GERMINATED: identity fields present
    G1 = 1  # -> TRAINING: germination complete
    G2 = 2  # -> BLENDING: dwell, the seed's probe, gradient activity, isolation
    G3 = 3  # -> HOLDING: alpha reached target after enough blending epochs
    G5 = 5  # -> FOSSILIZED: counterfactual contribution


GATE_FOR_TARGET: dict[SeedStage, GateLevel] = {
    SeedStage.GERMINATED: GateLevel.G0,
    SeedStage.TRAINING: GateLevel.G1,
    SeedStage.BLENDING: GateLevel.G2,
    SeedStage.HOLDING: GateLevel.G3,
    SeedStage.FOSSILIZED: GateLevel.G5,
}


@dataclass(frozen=True, slots=True)
class GateResult:
    """Outcome of one gate evaluation.

    Attributes:
        gate: which gate ran; ``None`` when the request was refused before any
            gate (an out-of-order or mechanical transition).
        passed: whether every check passed.
        score: a summary number in [0, 1]: the fraction of checks that passed.
        checks_passed: machine-readable tags of passed checks, e.g. ``"dwell_met"``.
        checks_failed: machine-readable tags of failed checks, e.g. ``"probe_loss_rose"``.
        message: one human-readable line.
        target: the stage the gate guards.
    """

    gate: GateLevel | None
    passed: bool
    score: float
    checks_passed: tuple[str, ...] = ()
    checks_failed: tuple[str, ...] = ()
    message: str = ""
    target: SeedStage | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"GateResult.score must lie in [0, 1], got {self.score!r}")
        if self.passed and self.checks_failed:
            raise ValueError(f"a passed gate cannot have failed checks: {self.checks_failed}")

    @classmethod
    def refused(cls, target: SeedStage, tag: str, message: str) -> GateResult:
        """A request turned down before any gate ran (e.g. an out-of-order target)."""
        return cls(GATE_FOR_TARGET.get(target), False, 0.0, (), (tag,), message, target)

    @classmethod
    def from_checks(
        cls,
        gate: GateLevel,
        target: SeedStage,
        checks: dict[str, bool],
        detail: str = "",
    ) -> GateResult:
        """Build a result from ``{tag: ok}``; passes when every check is ok."""
        passed = tuple(tag for tag, ok in checks.items() if ok)
        failed = tuple(tag for tag, ok in checks.items() if not ok)
        score = len(passed) / len(checks) if checks else 1.0
        verdict = "passed" if not failed else "failed: " + ", ".join(failed)
        message = f"{gate.name} -> {target.name} {verdict}" + (f" ({detail})" if detail else "")
        return cls(gate, not failed, score, passed, failed, message, target)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return {
            "gate": None if self.gate is None else self.gate.name,
            "passed": self.passed,
            "score": self.score,
            "checks_passed": list(self.checks_passed),
            "checks_failed": list(self.checks_failed),
            "message": self.message,
            "target": None if self.target is None else self.target.name,
        }
