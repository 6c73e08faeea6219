"""A slot's tournament verbs and forward, mixed into :class:`~esper.nn.slot.SeedSlot`.

While a tournament runs, the slot's seed is a
:class:`~esper.nn.candidates.CandidateSeeds`; these methods read and change it
and commit the pure verbs of :mod:`esper.core.tournament` through the slot's
``_commit`` (which turns each new state into events).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core import tournament as T
from ..core.state import SlotState
from ..leyline.constants import NON_FINITE
from ..ops.candidates import candidates_forward, candidates_probe
from ..ops.formula import blend_weight
from ..ops.health import SeedHealth, seed_health
from .candidates import CandidateSeeds


class TournamentSlot:
    """What :class:`~esper.nn.slot.SeedSlot` does with K candidates (a mixin: the slot
    provides what is declared under ``TYPE_CHECKING`` here)."""

    if TYPE_CHECKING:
        seed: nn.Module | None
        gate: nn.Module | None
        device: torch.device
        memory_format: torch.memory_format
        _state: SlotState

        def _require_unforced(self) -> None: ...
        def _commit(self, new: SlotState) -> SlotState: ...
        def record_movement(self) -> SlotState: ...
        def prune(self, reason: str = "manual", detail: str | None = None) -> SlotState: ...

    @property
    def candidates(self) -> CandidateSeeds | None:
        """The stacked candidates while a tournament runs here, else ``None``."""
        return self.seed if isinstance(self.seed, CandidateSeeds) else None

    def dropped_by_step(self) -> list[int]:
        """Candidates the training step dropped (its ``live`` buffer is 0) that the state
        still counts as live (one host sync)."""
        stacked = self.candidates
        if stacked is None:
            return []
        live = stacked.live.tolist()
        return [k for k in T.live_candidates(self._state) if live[k] == 0.0]

    def drop_candidates(self, indices: list[int]) -> SlotState:
        """Drop candidates ``indices`` from the tournament (one ``SEED_PRUNED`` each, reason
        ``non_finite``); if none is left, the slot's seed is pruned (same reason).

        Raises:
            StageError: no tournament here (a ``ValueError``).
            ValueError: an index that is not a live candidate.
        """
        self._require_unforced()
        new = T.drop(self._state, indices)
        stacked = self.candidates
        assert stacked is not None
        with torch.no_grad():
            for k in indices:
                stacked.live[k] = 0.0
        self._commit(new)
        if not T.live_candidates(new):
            return self.prune(NON_FINITE, detail="every candidate of the tournament went "
                                                 "non-finite")
        return self._state

    def select(self, scores: list[float | None],
               gradient_ratios: list[float | None] | None = None) -> SlotState:
        """End the tournament: the best-scoring live candidate becomes the slot's one seed
        (see :func:`~esper.core.tournament.select`, which also takes each candidate's
        ``gradient_ratios``); the others' weights leave the slot.

        The tournament's weights are checked for movement first (G2 reads it): the
        winner inherits whether any candidate trained.

        Raises:
            StageError: no tournament here (a ``ValueError``).
            ValueError: not one score per candidate, or no live candidate with a
                finite score.
        """
        self._require_unforced()
        ratios = gradient_ratios or ()
        # Checked before anything changes (a refused selection leaves the slot as it was);
        # selected again below from the state the movement check commits.
        chosen = T.select(self._state, scores, None, ratios).selection
        stacked = self.candidates
        assert stacked is not None and chosen is not None
        self.record_movement()
        winner = stacked.member(chosen.winner)
        params = sum(p.numel() for m in (winner, self.gate) if m is not None
                     for p in m.parameters())
        new = T.select(self._state, scores, params, ratios)
        self.seed = winner.to(self.device, memory_format=self.memory_format)
        try:
            return self._commit(new)
        except BaseException:
            self.seed = stacked
            raise

    def _tournament(self, host: Tensor, state: SlotState,
                    alpha: Tensor | None) -> tuple[Tensor, SeedHealth]:
        """A tournament's forward: incubation at the state's own alpha, else scoring (the
        batch holds one copy per candidate; see :mod:`esper.ops.candidates`)."""
        stacked = self.candidates
        assert stacked is not None
        if alpha is None and not state.alpha_overridden:
            return candidates_forward(state, stacked, host, stacked.live)
        alpha = state.alpha if alpha is None else alpha
        out = candidates_probe(state, stacked.chunked, host, alpha)
        return out, seed_health(host, out, blend_weight(alpha, host))


__all__ = ["TournamentSlot"]
