"""Validation accuracy and each slot's counterfactual contribution (no mutation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..data import batches
from ..kasmina.model import MorphogeneticModel


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).sum()


@torch.no_grad()
def count_correct(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> int:
    """How many of ``y``'s targets the model predicts (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = sum(_correct(model(xb), yb) for xb, yb in
                  batches(x, y, batch_size, shuffle=False))
    model.train(was_training)
    return int(correct)  # one host sync for the whole pass


def percent(correct: int, total: int) -> float:
    """``correct`` out of ``total`` in percent (what every accuracy here reports)."""
    return 100.0 * correct / total


def accuracy(model: MorphogeneticModel, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Validation accuracy in percent (eval mode, restored afterwards)."""
    return percent(count_correct(model, x, y, batch_size), y.numel())


def _per_sample_rank(model: MorphogeneticModel) -> int:
    return 4 if model.host.topology == "cnn" else 3


def counterfactuals(model: MorphogeneticModel, x: Tensor, y: Tensor, slots: Sequence[str],
                    reference: float, batch_size: int = 256) -> dict[str, float]:
    """Accuracy points each slot adds: ``reference`` minus accuracy with its alpha at 0."""
    counts = count_correct_without(model, x, y, slots, batch_size)
    return {name: reference - percent(count, y.numel()) for name, count in counts.items()}


@torch.no_grad()
def count_correct_without(model: MorphogeneticModel, x: Tensor, y: Tensor,
                          slots: Sequence[str], batch_size: int = 256) -> dict[str, int]:
    """Slot name -> how many targets the model predicts with that slot's alpha at 0.

    Slots with scalar alpha and no gate are evaluated together in one pass:
    the batch is repeated once per slot and a per-sample alpha zeroes slot
    ``i`` on copy ``i`` only. Other slots are evaluated one forward each.
    """
    was_training = model.training
    model.eval()
    batched = [s for s in slots if model.seed_slots[s].gate is None
               and model.seed_slots[s].state.alpha_mode == "scalar"]
    single = [s for s in slots if s not in batched]
    result: dict[str, int] = {}
    if batched:
        correct = torch.zeros(len(batched), dtype=torch.long)
        for xb, yb in batches(x, y, max(1, batch_size // len(batched)), shuffle=False):
            n, k = xb.shape[0], len(batched)
            overrides = {}
            for i, name in enumerate(batched):
                alpha = model.seed_slots[name].state.alpha.expand(k, n).clone()
                alpha[i] = 0.0
                shape = (k * n,) + (1,) * (_per_sample_rank(model) - 1)
                overrides[name] = alpha.reshape(shape)
            logits = model(xb.repeat((k,) + (1,) * (xb.dim() - 1)), alpha_overrides=overrides)
            hits = (logits.argmax(-1) == yb.repeat((k,) + (1,) * (yb.dim() - 1)))
            correct += hits.reshape(k, -1).sum(dim=1)
        for i, name in enumerate(batched):
            result[name] = int(correct[i])
    for name in single:
        correct_one = sum(_correct(model(xb, alpha_overrides={name: 0.0}), yb)
                          for xb, yb in batches(x, y, batch_size, shuffle=False))
        result[name] = int(correct_one)
    model.train(was_training)
    return {name: result[name] for name in slots}
