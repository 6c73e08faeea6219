"""What the controller decides: plain, serialisable records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..core.tournament import check_candidates
from ..leyline.constants import BLEND_ALGORITHMS, DEFAULT_CANDIDATES

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
        candidates: how many candidate seeds of the blueprint the germination plants
            (a tournament, :mod:`esper.core.tournament`; 1: one seed; germinate only).
    """

    action: Action
    slot: str
    reason: str
    blueprint_id: str | None = None
    seed_id: str | None = None
    blend_algorithm_id: str | None = None
    candidates: int = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; actions are {ACTIONS}")
        check_germination("decision", self.action, self.blueprint_id, self.seed_id,
                          self.blend_algorithm_id)
        check_candidates(self.candidates, "Decision.candidates")
        if self.candidates != DEFAULT_CANDIDATES and self.action != "germinate":
            raise ValueError(f"only a germinate decision plants candidates, not a {self.action}")

    def to_dict(self) -> dict[str, str | int | None]:
        """A JSON-ready view (``candidates`` only when a germination plants several)."""
        view: dict[str, str | int | None] = {
            "action": self.action, "slot": self.slot, "reason": self.reason,
            "blueprint_id": self.blueprint_id, "seed_id": self.seed_id,
            "blend_algorithm_id": self.blend_algorithm_id}
        if self.candidates != DEFAULT_CANDIDATES:
            view["candidates"] = self.candidates
        return view
