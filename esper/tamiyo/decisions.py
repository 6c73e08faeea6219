"""What the controller decides: plain, serialisable records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..leyline.constants import BLEND_ALGORITHMS

Action = Literal["germinate", "fossilize", "prune"]
ACTIONS: tuple[Action, ...] = ("germinate", "fossilize", "prune")


def check_germination(kind: str, action: str, blueprint_id: str | None, seed_id: str | None,
                      blend_algorithm_id: str | None) -> None:
    """The rule a decision and a signed command share: a germination names a blueprint
    and a seed, and only a germination may name a (known) blend algorithm.

    Raises:
        ValueError: naming ``kind`` (``"decision"``, ``"command"``) and what is wrong.
    """
    if action == "germinate" and not (blueprint_id and seed_id):
        raise ValueError(f"a germinate {kind} names a blueprint_id and a seed_id")
    if blend_algorithm_id is None:
        return
    if action != "germinate":
        raise ValueError(f"only a germinate {kind} names a blend_algorithm_id, not a {action}")
    if blend_algorithm_id not in BLEND_ALGORITHMS:
        raise ValueError(f"unknown blend_algorithm_id {blend_algorithm_id!r}; "
                         f"known: {BLEND_ALGORITHMS}")


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
        check_germination("decision", self.action, self.blueprint_id, self.seed_id,
                          self.blend_algorithm_id)

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready view."""
        return {"action": self.action, "slot": self.slot, "reason": self.reason,
                "blueprint_id": self.blueprint_id, "seed_id": self.seed_id,
                "blend_algorithm_id": self.blend_algorithm_id}
