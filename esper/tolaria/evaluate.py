"""Validation scores, counterfactuals and G2's probe of a training seed (no mutation).

A :class:`Score` is what one pass over the validation split measures: the
correct predictions and the summed loss, synced to Python once per pass.
:func:`scores_with` measures the model once for each slot with that slot's
alpha replaced: 0 gives the host-alone counterfactual of a blended seed, a
small probe alpha gives a training seed's own evidence for G2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import batches
from ..nn.model import MorphogeneticModel


@dataclass(frozen=True, slots=True)
class Score:
    """Correct predictions and summed loss over ``total`` targets."""

    correct: int
    loss: float
    total: int

    @property
    def accuracy(self) -> float:
        """Accuracy in percent."""
        return percent(self.correct, self.total)

    @property
    def mean_loss(self) -> float:
        """Mean loss per target."""
        return self.loss / self.total


def percent(correct: int, total: int) -> float:
    """``correct`` out of ``total`` in percent (what every accuracy here reports)."""
    return 100.0 * correct / total


def _tallies(logits: Tensor, y: Tensor, copies: int) -> Tensor:
    """``[copies, 2]`` float64: correct count and summed loss of each copy of the batch."""
    flat = logits.reshape(-1, logits.shape[-1])
    targets = y.reshape(-1).repeat(copies)
    hits = (flat.argmax(-1) == targets).reshape(copies, -1).sum(1)
    losses = F.cross_entropy(flat.float(), targets, reduction="none").reshape(copies, -1).sum(1)
    return torch.stack([hits.double(), losses.double()], dim=1)


def _score(tally: Tensor, total: int) -> Score:
    correct, loss = tally.tolist()
    return Score(int(correct), float(loss), total)


@torch.no_grad()
def tally(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> Tensor:
    """``[2]`` float64 on ``x``'s device: the model's correct count and summed loss on
    ``(x, y)`` (eval mode, restored afterwards; no sync)."""
    was_training = model.training
    model.eval()
    try:
        return sum((_tallies(model(xb), yb, 1)[0]
                    for xb, yb in batches(x, y, batch_size, shuffle=False)),
                   torch.zeros(2, dtype=torch.float64, device=x.device))
    finally:
        model.train(was_training)


def score(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> Score:
    """The model's :class:`Score` on ``(x, y)`` (eval mode, restored afterwards; one sync)."""
    return _score(tally(model, x, y, batch_size), y.numel())


def count_correct(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> int:
    """How many of ``y``'s targets the model predicts (eval mode, restored afterwards)."""
    return score(model, x, y, batch_size).correct


def accuracy(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Validation accuracy in percent (eval mode, restored afterwards)."""
    return score(model, x, y, batch_size).accuracy


def _per_sample_rank(model: MorphogeneticModel) -> int:
    return 4 if model.host.topology == "cnn" else 3


@torch.no_grad()
def scores_with(model: MorphogeneticModel, x: Tensor, y: Tensor, alphas: Mapping[str, float],
                batch_size: int = 256) -> dict[str, Score]:
    """Slot name -> the model's score with that slot's alpha replaced by ``alphas[slot]``.

    Every other slot keeps its own alpha. Slots with scalar alpha and no gate
    are measured together in one pass: the batch is repeated once per slot and
    a per-sample alpha changes slot ``i`` on copy ``i`` only. Other slots are
    measured one forward each (a gated slot's override bypasses its gate).
    """
    slots = list(alphas)
    table = tallies_with(model, x, y, alphas, batch_size).tolist() if slots else []
    return {name: Score(int(c), float(loss), y.numel())
            for name, (c, loss) in zip(slots, table, strict=True)}


@torch.no_grad()
def tallies_with(model: MorphogeneticModel, x: Tensor, y: Tensor, alphas: Mapping[str, float],
                 batch_size: int = 256) -> Tensor:
    """``[len(alphas), 2]`` float64 on ``x``'s device: :func:`tally` of the model with each
    slot's alpha replaced in turn (see :func:`scores_with`; no sync)."""
    was_training = model.training
    model.eval()
    try:
        return _tallies_with(model, x, y, alphas, batch_size)
    finally:
        model.train(was_training)


def _tallies_with(model: MorphogeneticModel, x: Tensor, y: Tensor, alphas: Mapping[str, float],
                  batch_size: int) -> Tensor:
    slots = list(alphas)
    batched = [s for s in slots if model.seed_slots[s].gate is None
               and model.seed_slots[s].state.alpha_mode == "scalar"]
    tallies = {s: torch.zeros(2, dtype=torch.float64, device=x.device) for s in slots}
    if batched:
        k = len(batched)
        for xb, yb in batches(x, y, max(1, batch_size // k), shuffle=False):
            n, overrides = xb.shape[0], {}
            for i, name in enumerate(batched):
                alpha = model.seed_slots[name].state.alpha.expand(k, n).clone()
                alpha[i] = alphas[name]
                overrides[name] = alpha.reshape((k * n,) + (1,) * (_per_sample_rank(model) - 1))
            logits = model(xb.repeat((k,) + (1,) * (xb.dim() - 1)), alpha_overrides=overrides)
            for name, tally in zip(batched, _tallies(logits, yb, k), strict=True):
                tallies[name] += tally
    for name in (s for s in slots if s not in batched):
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            tallies[name] += _tallies(model(xb, alpha_overrides={name: alphas[name]}), yb, 1)[0]
    if not slots:
        return torch.zeros(0, 2, dtype=torch.float64, device=x.device)
    return torch.stack([tallies[s] for s in slots])


def counterfactuals(model: MorphogeneticModel, x: Tensor, y: Tensor, slots: Sequence[str],
                    reference: float, batch_size: int = 256) -> dict[str, float]:
    """Accuracy points each slot adds: ``reference`` minus accuracy with its alpha at 0."""
    without = scores_with(model, x, y, dict.fromkeys(slots, 0.0), batch_size)
    return {name: reference - s.accuracy for name, s in without.items()}


def count_correct_without(model: MorphogeneticModel, x: Tensor, y: Tensor,
                          slots: Sequence[str], batch_size: int = 256) -> dict[str, int]:
    """Slot name -> how many targets the model predicts with that slot's alpha at 0."""
    without = scores_with(model, x, y, dict.fromkeys(slots, 0.0), batch_size)
    return {name: s.correct for name, s in without.items()}


def probe_loss_reduction(reference: Score, probed: Score) -> float:
    """G2's evidence: the relative loss reduction ``(L_ref - L_probe) / L_ref``.

    ``reference`` is the model as it runs (a training seed's alpha is 0, so
    this is the host alone at that slot); ``probed`` the same with the seed
    blended in at the probe alpha. Positive means the seed helps; a blown-up
    or harmful seed gives a large negative number (or ``-inf``).
    """
    if reference.mean_loss <= 0:
        return 0.0 if probed.mean_loss <= 0 else float("-inf")
    return (reference.mean_loss - probed.mean_loss) / reference.mean_loss




@dataclass(frozen=True)
class Validation:
    """One epoch's validation: the model's score and each slot's alternatives.

    Attributes:
        model: the model as it runs.
        without: blended slot -> the score with its alpha at 0 (the host alone there).
        probed: training slot -> the score with its seed blended in at the probe alpha.
        candidates: tournament slot -> each candidate's score blended in alone at the
            probe alpha (measured only when the tournament is to be decided).
    """

    model: Score
    without: Mapping[str, Score]
    probed: Mapping[str, Score]
    candidates: Mapping[str, tuple[Score, ...]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """The model's accuracy in percent."""
        return self.model.accuracy

    def counterfactuals(self) -> dict[str, float]:
        """Accuracy points each blended slot adds."""
        return {name: self.model.accuracy - s.accuracy for name, s in self.without.items()}

    def probe_reductions(self) -> dict[str, float]:
        """Each training slot's :func:`probe_loss_reduction` (G2's evidence)."""
        return {name: probe_loss_reduction(self.model, s) for name, s in self.probed.items()}

    def candidate_reductions(self) -> dict[str, list[float]]:
        """Each candidate's :func:`probe_loss_reduction`, per tournament slot: its score."""
        return {name: [probe_loss_reduction(self.model, s) for s in scores]
                for name, scores in self.candidates.items()}

    def blown_up(self, max_ratio: float) -> list[str]:
        """Blended slots whose model loss exceeds ``max_ratio`` times the host-alone loss."""
        return [name for name, s in self.without.items()
                if not self.model.mean_loss <= max_ratio * s.mean_loss]

    def blowup(self, slot: str, max_ratio: float) -> str:
        """Why blended ``slot`` is in :meth:`blown_up`, in words."""
        return (f"validation loss {self.model.mean_loss:.4g} is over {max_ratio:g} times "
                f"the host-alone loss {self.without[slot].mean_loss:.4g} at the slot")


@torch.no_grad()
def candidate_tallies(model: MorphogeneticModel, x: Tensor, y: Tensor, slot: str, alpha: float,
                      batch_size: int = 256) -> Tensor:
    """``[K, 2]`` float64 on ``x``'s device: :func:`tally` of the model with candidate ``k``
    of ``slot``'s tournament alone blended in at ``alpha``, for each ``k``.

    One pass: each batch is repeated K times and the slot blends candidate ``k``
    into copy ``k`` only (see :mod:`esper.ops.candidates`). Eval mode, restored.
    """
    count = model.seed_slots[slot].state.candidates
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(count, 2, dtype=torch.float64, device=x.device)
        for xb, yb in batches(x, y, max(1, batch_size // count), shuffle=False):
            copies = xb.repeat((count,) + (1,) * (xb.dim() - 1))
            total += _tallies(model(copies, alpha_overrides={slot: alpha}), yb, count)
        return total
    finally:
        model.train(was_training)


def candidate_scores(model: MorphogeneticModel, x: Tensor, y: Tensor, slot: str, alpha: float,
                     batch_size: int = 256) -> tuple[Score, ...]:
    """Each candidate's :class:`Score` (see :func:`candidate_tallies`; one sync)."""
    rows = candidate_tallies(model, x, y, slot, alpha, batch_size).tolist()
    return tuple(Score(int(c), float(loss), y.numel()) for c, loss in rows)


def validate(model: MorphogeneticModel, x: Tensor, y: Tensor, blended: Sequence[str],
             probed: Mapping[str, float], batch_size: int = 256,
             tournaments: Mapping[str, float] | None = None) -> Validation:
    """The model's score, each ``blended`` slot without its seed, each ``probed`` slot
    with its alpha at ``probed[slot]`` (two passes, one of them batched) and each
    candidate of each ``tournaments`` slot alone at ``tournaments[slot]`` (a pass each)."""
    scores = scores_with(model, x, y, {**dict.fromkeys(blended, 0.0), **probed}, batch_size)
    candidates = {name: candidate_scores(model, x, y, name, alpha, batch_size)
                  for name, alpha in (tournaments or {}).items()}
    return Validation(score(model, x, y, batch_size),
                      {name: scores[name] for name in blended},
                      {name: scores[name] for name in probed}, candidates)


__all__ = ["Score", "Validation", "accuracy", "candidate_scores", "candidate_tallies",
           "count_correct", "count_correct_without", "counterfactuals", "percent",
           "probe_loss_reduction", "score", "scores_with", "tallies_with", "tally", "validate"]
