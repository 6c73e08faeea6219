"""The tournament's pure verbs, its events and its persistence."""

from __future__ import annotations

import math

import pytest
import torch

from esper.core import tournament as T
from esper.core.events import events
from esper.core.serialize import state_from_dict, state_to_dict
from esper.errors import StageError
from esper.kasmina import SlotState, germinate, prune, step
from esper.leyline import EventType, SeedStage, SlotTelemetry, TaskConfig
from esper.leyline.constants import LOST_SELECTION, MAX_CANDIDATES, NON_FINITE
from esper.leyline.names import is_stacked
from esper.optim.state import decays
from esper.tolaria.records import EpochRecord, SlotSnapshot
from esper.tolaria.report import tournament_marks


def _tournament(k: int = 4) -> SlotState:
    state = SlotState.dormant("mid", channels=4, task=TaskConfig(max_epochs=5))  # dwell 1
    state = germinate(state, "norm", "t1", seed_params=32, candidates=k)
    return step(state, SlotTelemetry(50.0))  # GERMINATED -> TRAINING


def test_germinate_records_the_candidates_and_a_prune_ends_the_tournament() -> None:
    state = _tournament()
    assert (state.stage, state.candidates, state.in_tournament) == (SeedStage.TRAINING, 4, True)
    pruned = prune(state, "manual")
    assert (pruned.stage, pruned.candidates) == (SeedStage.PRUNED, 1)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (MAX_CANDIDATES + 1, ValueError),
                                        (2.0, TypeError), (True, TypeError), ("4", TypeError)])
def test_germinate_refuses_a_bad_candidate_count(bad: object, error: type) -> None:
    state = SlotState.dormant("mid", channels=4)
    with pytest.raises(error, match="candidates"):
        germinate(state, "norm", "t1", candidates=bad)  # type: ignore[arg-type]


def test_g2_waits_for_the_selection_and_the_selection_is_due_at_the_dwell() -> None:
    state = _tournament()
    assert T.selection_due(state)  # the default dwell is one epoch
    stepped = step(state, SlotTelemetry(51.0, seed_gradient_norm_ratio=1.0,
                                        probe_loss_reduction=0.5))
    assert stepped.stage == SeedStage.TRAINING
    assert "tournament_undecided" in stepped.last_gate.checks_failed


def test_select_keeps_the_best_live_candidate_and_reports_the_losers() -> None:
    before = _tournament()
    dropped = T.drop(before, [2])
    after = T.select(dropped, [0.1, 0.3, 0.9, 0.3])
    # candidate 2 scored best but was dropped; 1 and 3 tie, the lower index wins
    assert after.selection.winner == 1
    assert after.selection.scores == (0.1, 0.3, None, 0.3)
    assert (after.candidates, after.stage, after.seed_id) == (1, SeedStage.TRAINING, "t1")
    assert after.metrics.probe_loss_reduction == 0.3
    found = events(before, after)
    drops = [e for e in found if e.payload.get("reason") == NON_FINITE]
    assert [e.seed_id for e in drops] == ["t1#2"]
    selected = [e for e in found if e.type == EventType.CANDIDATE_SELECTED]
    assert len(selected) == 1
    assert selected[0].payload["winner"] == 1 and selected[0].payload["seed_id"] == "t1#1"
    losers = [e for e in found if e.payload.get("reason") == LOST_SELECTION]
    assert [e.seed_id for e in losers] == ["t1#0", "t1#3"]
    assert all(e.type == EventType.SEED_PRUNED and e.payload["scores"] == [0.1, 0.3, None, 0.3]
               for e in losers)


def test_select_ignores_non_finite_scores_and_refuses_when_none_is_left() -> None:
    state = _tournament(3)
    assert T.select(state, [math.nan, -0.2, -math.inf]).selection.winner == 1
    with pytest.raises(ValueError, match="finite score"):
        T.select(state, [math.nan, None, math.nan])
    with pytest.raises(ValueError, match="3 candidates"):
        T.select(state, [0.1, 0.2])


def test_selecting_or_dropping_without_a_tournament_is_refused() -> None:
    single = step(germinate(SlotState.dormant("mid", channels=4), "norm", "s"),
                  SlotTelemetry(50.0))
    with pytest.raises(StageError, match="no tournament"):
        T.select(single, [0.1])
    with pytest.raises(StageError, match="no tournament"):
        T.drop(single, [0])
    with pytest.raises(ValueError, match="not live"):
        T.drop(_tournament(), [7])


def test_a_tournament_cannot_outlive_training() -> None:
    state = _tournament()
    with pytest.raises(ValueError, match="tournament"):
        state.replace(stage=SeedStage.BLENDING)


def test_the_tournament_round_trips_through_the_state_document() -> None:
    state = T.drop(_tournament(), [0])
    loaded = state_from_dict(state_to_dict(state))
    assert (loaded.candidates, loaded.dropped) == (4, (0,))
    selected = T.select(state, [None, 0.2, 0.1, 0.0])
    loaded = state_from_dict(state_to_dict(selected))
    assert loaded.selection == selected.selection and loaded.candidates == 1


def test_a_state_saved_before_tournaments_loads_as_one_seed() -> None:
    document = state_to_dict(_tournament())
    for key in ("candidates", "dropped", "selection"):
        del document[key]
    loaded = state_from_dict(document)
    assert (loaded.candidates, loaded.dropped, loaded.selection) == (1, (), None)


def test_stacked_parameters_decay_as_one_candidate_would() -> None:
    name = "seed_slots.mid.seed.stack.weight"
    assert is_stacked(name) and not is_stacked("seed_slots.mid.seed.weight")
    assert not decays(name, torch.zeros(4, 64))  # four norm weights: no decay
    assert decays(name, torch.zeros(4, 16, 64, 3, 3))  # four conv kernels: decay
    assert decays("seed_slots.mid.seed.weight", torch.zeros(16, 64))


def test_the_growth_plot_marks_where_a_tournament_began_and_who_won() -> None:
    def record(epoch: int, candidates: int, winner: int | None, seed: str | None = "t"):
        stage = "TRAINING" if seed else "DORMANT"
        shot = SlotSnapshot("mid", stage, 0.0, seed, "norm" if seed else None,
                            candidates=candidates, winner=winner)
        return EpochRecord(epoch, 1.0, 50.0, (shot,), 0.1)

    records = [record(1, 1, None, None), record(2, 4, None), record(3, 4, None),
               record(4, 1, 2), record(5, 1, 2)]
    assert tournament_marks(records, "mid") == [(2, "x4"), (4, "#2 won")]
    assert tournament_marks(records, "early") == []
