"""Telemetry contracts: what a slot is told each epoch and what it reports back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ..errors import TelemetryTypeError, TelemetryValueError
from ..validation import is_int, is_real


class EventType(StrEnum):
    """Lifecycle events a slot transition implies.

    ``SEED_FROZEN`` is a warning, given once per seed: a TRAINING seed's weights had not
    moved at all since it began TRAINING (it is in no optimizer step), so G2 refuses it.
    ``CANDIDATE_SELECTED`` ends a tournament (K candidate seeds in one slot): its
    payload has every candidate's score and the winner; each other candidate gets a
    ``SEED_PRUNED`` (reason ``lost_selection``, the scores in its payload; a
    candidate dropped earlier for a non-finite output got one then, reason
    ``non_finite``). ``SEED_CULLED`` is the older revision's name of ``SEED_PRUNED`` (as
    ``SeedStage.CULLED`` is of ``PRUNED``) and is accepted as an alias.
    """

    SEED_GERMINATED = "SEED_GERMINATED"
    SEED_STAGE_CHANGED = "SEED_STAGE_CHANGED"
    SEED_GATE_EVALUATED = "SEED_GATE_EVALUATED"
    SEED_FOSSILIZED = "SEED_FOSSILIZED"
    SEED_PRUNED = "SEED_PRUNED"
    COMMAND_REJECTED = "COMMAND_REJECTED"
    BREAKER_CHANGED = "BREAKER_CHANGED"
    SEED_FROZEN = "SEED_FROZEN"
    CANDIDATE_SELECTED = "CANDIDATE_SELECTED"
    SEED_CULLED = "SEED_PRUNED"


# The payload keys each event carries (the specification's lists; SEED_PRUNED's "scores"
# and CANDIDATE_SELECTED are Esper's, for tournaments).
EVENT_PAYLOAD_FIELDS: Mapping[EventType, tuple[str, ...]] = MappingProxyType({
    EventType.SEED_GERMINATED: ("blueprint_id", "seed_id", "params"),
    EventType.SEED_STAGE_CHANGED: ("from", "to", "reason"),
    EventType.SEED_GATE_EVALUATED: (
        "gate", "target", "passed", "score", "checks_passed", "checks_failed", "message"),
    EventType.SEED_FOSSILIZED: (
        "blueprint_id", "seed_id", "improvement", "blending_delta", "counterfactual",
        "params_added", "epochs_total", "epochs_in_stage"),
    EventType.SEED_PRUNED: (
        "reason", "blueprint_id", "seed_id", "improvement", "blending_delta", "counterfactual",
        "epochs_total", "epochs_in_stage", "detail", "scores"),
    EventType.COMMAND_REJECTED: ("reason", "slot", "nonce", "detail"),
    EventType.BREAKER_CHANGED: (
        "from", "to", "reason", "step", "failures", "probe_successes", "forced"),
    EventType.SEED_FROZEN: ("slot", "seed_id", "blueprint_id", "params", "detail", "hint"),
    EventType.CANDIDATE_SELECTED: ("blueprint_id", "seed_id", "winner", "candidates", "scores",
                                   "gradient_ratios"),
})


@dataclass(frozen=True, slots=True)
class TelemetryEvent:
    """One lifecycle event of one slot.

    Attributes:
        type: what happened.
        slot_id: the slot it happened in.
        seed_id: the seed involved (``None`` for an empty slot).
        epoch: the slot's epoch counter when it happened.
        payload: the event's fields, exactly ``EVENT_PAYLOAD_FIELDS[type]``.
    """

    type: EventType
    slot_id: str
    seed_id: str | None
    epoch: int
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = set(EVENT_PAYLOAD_FIELDS[self.type])
        if set(self.payload) != expected:
            raise ValueError(
                f"{self.type.value} payload must have keys {sorted(expected)}, "
                f"got {sorted(self.payload)}")
        object.__setattr__(self, "payload", MappingProxyType(dict(self.payload)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"type": self.type.value, "slot_id": self.slot_id, "seed_id": self.seed_id,
                "epoch": self.epoch, "payload": dict(self.payload)}


def _check_number(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if not is_real(value):
        kind = "a number or None" if optional else "a number"
        raise TelemetryTypeError(f"SlotTelemetry.{name} must be {kind}, got {value!r}: "
                                 "pass a float (float('nan') marks a failed measurement)")
    if isinstance(value, int) and abs(value) > 2**1023:
        raise TelemetryValueError(f"SlotTelemetry.{name} is too large for a float: {value}; "
                                  "pass the measurement as a float")


@dataclass(frozen=True, slots=True)
class SlotTelemetry:
    """What one slot learns about its seed in one epoch.

    Attributes:
        accuracy: validation accuracy of the whole model, in percent.
        counterfactual_contribution: accuracy with the slot minus accuracy with
            the slot's alpha forced to 0, in points; ``None`` when not measured.
        seed_gradient_norm_ratio: parameter-normalised seed/host gradient ratio;
            ``None`` when not measured this epoch (the last value is kept).
        isolation_violations: isolation probes that leaked this epoch.
        finite: ``False`` when the epoch saw a non-finite loss, activation or
            gradient; the seed is then pruned with reason ``"non_finite"``.
        probe_loss_reduction: a training seed's own evidence for G2: the relative
            validation-loss reduction ``(L_host - L_probe) / L_host`` when it is
            blended in at ``QualityGates.probe_alpha``, against the model with
            its alpha at 0; ``None`` when not measured (the last value is kept).

    Non-finite numbers are accepted (they are data: :attr:`is_finite` reports
    them); wrong types raise :class:`~esper.errors.TelemetryTypeError` (a
    ``TypeError``) and a negative violation count
    :class:`~esper.errors.TelemetryValueError` (a ``ValueError``).
    """

    accuracy: float
    counterfactual_contribution: float | None = None
    seed_gradient_norm_ratio: float | None = None
    isolation_violations: int = 0
    finite: bool = True
    probe_loss_reduction: float | None = None

    def __post_init__(self) -> None:
        _check_number("accuracy", self.accuracy, optional=False)
        _check_number("counterfactual_contribution", self.counterfactual_contribution, True)
        _check_number("seed_gradient_norm_ratio", self.seed_gradient_norm_ratio, True)
        _check_number("probe_loss_reduction", self.probe_loss_reduction, True)
        violations = self.isolation_violations
        if not is_int(violations):
            raise TelemetryTypeError(
                f"SlotTelemetry.isolation_violations must be an int, got {violations!r}: "
                "pass the count of leaking isolation probes")
        if violations < 0:
            raise TelemetryValueError(
                f"SlotTelemetry.isolation_violations must be >= 0, got {violations}: "
                "pass the count of leaking isolation probes")
        if not isinstance(self.finite, bool):
            raise TelemetryTypeError(f"SlotTelemetry.finite must be a bool, got "
                                     f"{self.finite!r}: pass False after a non-finite epoch")

    @property
    def is_finite(self) -> bool:
        """Whether the flag and every number reported are finite."""
        numbers = (self.accuracy, self.counterfactual_contribution, self.seed_gradient_norm_ratio)
        return self.finite and all(v is None or math.isfinite(v) for v in numbers)
