"""What the controller decides: plain, serialisable records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..leyline.constants import BLEND_ALGORITHMS

Action = Literal["germinate", "fossilize", "prune"]
ACTIONS: tuple[Action, ...] = ("germinate", "fossilize", "prune")


@dataclass(frozen=True, slots=True)
class Decision:
    """One lifecycle request of the controller for one slot.

    Attributes:
        action: ``"germinate"``, ``"fossilize"`` or ``"prune"``.
        slot: the slot it concerns.
        reason: a machine-readable tag (``"plateau"``, ``"g5_ready"``, ``"stalled"``...).
        blueprint_id: the blueprint to germinate (germinate only).
        seed_id: the seed to create or the seed concerned.
        blend_algorithm_id: the alpha ramp of the seed to germinate (germinate only;
            ``None``: the run's own, ``esper grow --blend``).
    """

    action: Action
    slot: str
    reason: str
    blueprint_id: str | None = None
    seed_id: str | None = None
    blend_algorithm_id: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; actions are {ACTIONS}")
        if self.action == "germinate" and not (self.blueprint_id and self.seed_id):
            raise ValueError("a germinate decision names a blueprint_id and a seed_id")
        if self.blend_algorithm_id is not None:
            if self.action != "germinate":
                raise ValueError(f"only a germinate decision names a blend_algorithm_id, not "
                                 f"a {self.action}")
            if self.blend_algorithm_id not in BLEND_ALGORITHMS:
                raise ValueError(f"unknown blend_algorithm_id {self.blend_algorithm_id!r}; "
                                 f"known: {BLEND_ALGORITHMS}")

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready view."""
        return {"action": self.action, "slot": self.slot, "reason": self.reason,
                "blueprint_id": self.blueprint_id, "seed_id": self.seed_id,
                "blend_algorithm_id": self.blend_algorithm_id}
