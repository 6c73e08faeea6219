"""The seeds of a run's random streams: fixed derivations, so a run reproduces."""

from __future__ import annotations

from esper.tolaria.seeding import epoch_seed, germination_seed, probe_seed


def test_each_stream_has_its_own_fixed_seed():
    # The values every earlier run used: changing one would change every run.
    assert epoch_seed(3, 2) == 3 * 1_000_003 + 2
    assert probe_seed(3, 2) == epoch_seed(3, 2) + 7
    assert germination_seed(3, 2) == epoch_seed(3, 2) + 11
    streams = [f(seed, epoch) for seed in range(3) for epoch in range(1, 4)
               for f in (epoch_seed, probe_seed, germination_seed)]
    assert len(set(streams)) == len(streams)
