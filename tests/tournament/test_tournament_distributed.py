"""A tournament under torchrun: every rank scores the candidates on its shard, the scores
are summed over the ranks with the rest of validation, and every rank keeps the same winner."""

from __future__ import annotations

import json

import pytest

from esper.tolaria.data_parallel import REPLICA_DUMP_ENV
from tests.tolaria.test_distributed import assert_identical, replicas, torchrun


@pytest.mark.slow
def test_two_ranks_select_the_same_winner_and_stay_bit_identical(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "replicas"
    torchrun(["-m", "esper", "grow", "--epochs", "8", "--limit", "96", "--max-seeds", "1",
              "--candidates", "3", "--slots", "mid", "--blueprints", "conv_light",
              "--compile", "never", "--quiet", "--out", str(out)],
             **{REPLICA_DUMP_ENV: str(dump)})
    rank0, rank1 = replicas(dump)
    assert_identical(rank0, rank1)  # the slot states hold the selection: the same winner
    selection = rank0.model.seed_slots["mid"].state.selection
    assert selection is not None and selection == rank1.model.seed_slots["mid"].state.selection
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    selected = [e for e in events if e.get("type") == "CANDIDATE_SELECTED"]
    assert len(selected) == 1 and selected[0]["payload"]["winner"] == selection.winner
    lost = [e for e in events if e.get("type") == "SEED_PRUNED"
            and e["payload"]["reason"] == "lost_selection"]
    assert len(lost) == 2
