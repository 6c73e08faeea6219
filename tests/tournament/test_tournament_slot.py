"""A tournament in a slot: germination checks, selection, drops and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from esper.errors import CandidatesUnsupportedError, StageError
from esper.leyline import EventType, SeedStage, SlotTelemetry
from esper.leyline.constants import NON_FINITE
from esper.nn.candidates import CandidateSeeds
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from tests.broken_modules import registered


class _DataDependent(nn.Module):
    """A seed whose forward branches on a value: torch.func.vmap refuses it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        if float(self.scale.sum()) > 0:
            return x * self.scale.view(-1, 1, 1)
        return x


def _model(k: int = 3, blueprint: str = "conv_light") -> tuple[MorphogeneticModel, list]:
    events: list = []
    torch.manual_seed(1)
    model = MorphogeneticModel(CNNHost(), slots=("mid",), on_telemetry=events.append)
    model.germinate_seed(blueprint, "t", slot="mid", candidates=k)
    model.step_epoch({"mid": SlotTelemetry(50.0)})
    return model, events


def test_a_blueprint_that_cannot_be_vmapped_is_refused_at_germination() -> None:
    model = MorphogeneticModel(CNNHost(), slots=("mid",))
    with registered("data_dependent", _DataDependent):
        model.germinate_seed("data_dependent", "one", slot="mid")  # alone it is fine
        model.prune_seed(slot="mid")
        fresh = MorphogeneticModel(CNNHost(), slots=("mid",))
        with pytest.raises(CandidatesUnsupportedError, match=r"'data_dependent'.*vmap"):
            fresh.germinate_seed("data_dependent", "many", slot="mid", candidates=2)
    assert fresh.seed_slots["mid"].state.stage == SeedStage.DORMANT
    assert fresh.seed_slots["mid"].seed is None


def test_a_blueprint_without_parameters_is_refused() -> None:
    model = MorphogeneticModel(CNNHost(), slots=("mid",))
    with pytest.raises(CandidatesUnsupportedError, match="'noop' has no trainable parameters"):
        model.germinate_seed("noop", "n", slot="mid", candidates=2)


@pytest.mark.filterwarnings("ignore:seed 't' in slot 'mid' did not train")
def test_select_keeps_the_winner_as_an_ordinary_seed() -> None:
    model, events = _model()
    slot = model.seed_slots["mid"]
    stacked = slot.seed
    assert isinstance(stacked, CandidateSeeds)
    expected = stacked.member(2).state_dict()
    x = torch.randn(4, 64, 16, 16)
    model.select_candidate(slot="mid", scores=[0.1, 0.05, 0.2])
    assert not isinstance(slot.seed, CandidateSeeds)
    assert all(torch.equal(slot.seed.state_dict()[k], v) for k, v in expected.items())
    assert not any(".stack." in n for n, _ in model.named_parameters())
    assert slot.state.selection.winner == 2 and slot.state.stage == SeedStage.TRAINING
    kinds = [e.type for e in events[-3:]]
    assert kinds == [EventType.CANDIDATE_SELECTED, EventType.SEED_PRUNED, EventType.SEED_PRUNED]
    with torch.no_grad():  # the winner now runs as one seed, still invisible at alpha 0
        assert torch.equal(slot(x), x)


def test_selection_asked_of_a_slot_without_candidates_is_refused() -> None:
    model = MorphogeneticModel(CNNHost(), slots=("mid",))
    model.germinate_seed("norm", "s", slot="mid")
    with pytest.raises(StageError, match="no tournament"):
        model.select_candidate(slot="mid", scores=[0.1])


def test_dropping_every_candidate_prunes_the_slot() -> None:
    model, events = _model(2)
    slot = model.seed_slots["mid"]
    slot.drop_candidates([0])
    assert slot.state.dropped == (0,) and slot.seed.live.tolist() == [0.0, 1.0]
    slot.drop_candidates([1])
    assert slot.state.stage == SeedStage.PRUNED and slot.seed is None
    pruned = [e for e in events if e.type == EventType.SEED_PRUNED]
    assert [(e.seed_id, e.payload["reason"]) for e in pruned] == [
        ("t#0", NON_FINITE), ("t#1", NON_FINITE), ("t", NON_FINITE)]


def test_a_checkpoint_mid_tournament_loads_the_same_candidates() -> None:
    model, _ = _model(4)
    model.seed_slots["mid"].drop_candidates([3])
    with torch.no_grad():
        model.seed_slots["mid"].seed.stack.conv_in.weight.mul_(1.5)  # trained, say
    restored = MorphogeneticModel(CNNHost(), slots=("mid",))
    restored.load_state_dict(model.state_dict())
    state = restored.seed_slots["mid"].state
    assert (state.candidates, state.dropped, state.stage) == (4, (3,), SeedStage.TRAINING)
    for name, value in model.state_dict().items():
        if isinstance(value, Tensor):
            assert torch.equal(restored.state_dict()[name], value), name
    x = torch.randn(4, 3, 32, 32)
    model.zero_grad(), restored.zero_grad()
    model(x).sum().backward()
    restored(x).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), restored.named_parameters(),
                                 strict=True):
        assert torch.equal(p.grad, q.grad), name
