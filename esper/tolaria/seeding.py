"""The seeds of a run's random streams, each derived from the run's seed and the epoch.

Every random draw of ``esper grow`` is seeded from ``(seed, epoch)``, so a run
is deterministic on CPU and a resumed run continues exactly. Each epoch has
a base seed (:func:`epoch_seed`); the other streams of the epoch add a fixed
offset to it, so no two of them draw the same numbers. The offsets are
arbitrary, but a changed one changes every run: they are part of what makes
two runs with the same seed the same run.
"""

from __future__ import annotations

EPOCH_STRIDE = 1_000_003
"""How far apart consecutive run seeds put their epochs' base seeds."""
PROBE_STREAM = 7
"""Offset of the isolation probes' random cotangents from the epoch's base seed."""
GERMINATION_STREAM = 11
"""Offset of the weights of seeds germinated at the epoch's end from its base seed."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The base seed of ``epoch``: the order of its batches (epoch 0: the initial weights)."""
    return seed * EPOCH_STRIDE + epoch


def probe_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``'s isolation probes (their random cotangents)."""
    return epoch_seed(seed, epoch) + PROBE_STREAM


def germination_seed(seed: int, epoch: int) -> int:
    """The seed of the CPU generator when ``epoch``'s decisions germinate seeds (their weights)."""
    return epoch_seed(seed, epoch) + GERMINATION_STREAM
