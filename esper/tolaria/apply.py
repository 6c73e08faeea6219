"""Applying one lifecycle decision, the controller's or a verified command's, to its slot."""

from __future__ import annotations

from ..core.state import SlotState
from ..errors import CandidatesUnsupportedError, SeedRaisedError
from ..leyline import SlotTelemetry, TelemetryEvent
from ..nn.slot import SeedSlot
from ..tamiyo import Decision
from .commands import rejection_event
from .external import seed_mismatch

GERMINATED = "germinated"


def apply_decision(slot: SeedSlot, decision: Decision, telemetry: SlotTelemetry,
                   blend_algorithm: str) -> str:
    """Germinate, fossilize or prune ``slot`` as ``decision`` says; the outcome in words.

    A blueprint whose code raises while its seed is built is untrusted code
    failing, and one whose seeds cannot run as the candidates the decision asks
    for cannot be planted so: either way the slot stays as it was and the run
    goes on without it.

    Arguments:
        slot: the decision's slot.
        decision: what to do.
        telemetry: the slot's telemetry of the epoch (fossilize's gate reads it).
        blend_algorithm: the blend of a germination that names none.

    Returns:
        ``"germinated"``, ``"fossilized"``, ``"refused: <gate message>"``,
        ``"pruned"``, or ``"failed: <error>"`` when the blueprint raised.

    Raises:
        ValueError, RuntimeError: the lifecycle refuses the decision (nothing changed).
    """
    if decision.action == "germinate":
        assert decision.blueprint_id is not None and decision.seed_id is not None
        try:
            slot.germinate(decision.blueprint_id, decision.seed_id,
                           blend_algorithm_id=decision.blend_algorithm_id or blend_algorithm,
                           candidates=decision.candidates)
        except (SeedRaisedError, CandidatesUnsupportedError) as error:
            return f"failed: {error}"
        return GERMINATED
    if decision.action == "fossilize":
        result = slot.fossilize(telemetry)
        return "fossilized" if result.passed else f"refused: {result.message}"
    slot.prune(decision.reason)
    return "pruned"


def command_rejection(decision: Decision, state: SlotState) -> TelemetryEvent | None:
    """The ``COMMAND_REJECTED`` event (reason ``seed_mismatch``) of a verified command's
    prune or fossilize that names another seed than the slot's, else ``None``."""
    mismatch = seed_mismatch(decision, state)
    if mismatch is None:
        return None
    return rejection_event("seed_mismatch", mismatch, slot=decision.slot, seed_id=decision.seed_id)
