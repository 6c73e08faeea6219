"""K candidates in one slot: the host's output is exactly the host's, and each candidate
gets exactly the gradient it would get alone (DESIGN.md's formula, K times over)."""

from __future__ import annotations

import pytest
import torch

from esper.leyline import SeedStage, SlotTelemetry
from esper.nn.candidates import CandidateSeeds
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel

K = 4


def _host_state(model: MorphogeneticModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("seed_slots.")}


def _models(blueprint: str) -> tuple[MorphogeneticModel, MorphogeneticModel]:
    """A model with K candidates of ``blueprint`` in TRAINING at ``mid``, and a bare copy."""
    torch.manual_seed(0)
    tournament = MorphogeneticModel(CNNHost(), slots=("mid",))
    tournament.germinate_seed(blueprint, "t", slot="mid", candidates=K)
    tournament.step_epoch({"mid": SlotTelemetry(50.0)})
    assert tournament.seed_slots["mid"].state.stage == SeedStage.TRAINING
    bare = MorphogeneticModel(CNNHost(), slots=("mid",))
    bare.load_state_dict(_host_state(tournament), strict=False)
    return tournament, bare


def _lone(tournament: MorphogeneticModel, blueprint: str, index: int) -> MorphogeneticModel:
    """A model with the same host and one seed: candidate ``index``'s weights, in TRAINING."""
    lone = MorphogeneticModel(CNNHost(), slots=("mid",))
    lone.load_state_dict(_host_state(tournament), strict=False)
    lone.germinate_seed(blueprint, "lone", slot="mid")
    lone.step_epoch({"mid": SlotTelemetry(50.0)})
    stacked = tournament.seed_slots["mid"].seed
    assert isinstance(stacked, CandidateSeeds)
    lone.seed_slots["mid"].seed.load_state_dict(stacked.member(index).state_dict())
    return lone


def _grads(model: MorphogeneticModel, x: torch.Tensor, cotangent: torch.Tensor
           ) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (model(x) * cotangent).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("blueprint", ["norm", "conv_light"])
def test_output_is_bit_identical_to_the_host(blueprint: str) -> None:
    tournament, bare = _models(blueprint)
    x = torch.randn(6, 3, 32, 32)
    for mode in (True, False):
        tournament.train(mode), bare.train(mode)
        with torch.no_grad():
            assert torch.equal(tournament(x), bare(x))


@pytest.mark.parametrize("blueprint", ["norm", "conv_light"])
def test_each_candidate_gets_the_gradient_it_would_get_alone(blueprint: str) -> None:
    tournament, _ = _models(blueprint)
    x = torch.randn(6, 3, 32, 32)
    cotangent = torch.randn(6, 10)
    together = _grads(tournament, x, cotangent)
    stacked = dict(tournament.seed_slots["mid"].seed.stack.named_parameters())
    assert len(stacked) > 0
    for k in range(K):
        lone = _lone(tournament, blueprint, k)
        alone = _grads(lone, x, cotangent)
        for name in stacked:
            mine = together[f"seed_slots.mid.seed.stack.{name}"][k]
            theirs = alone[f"seed_slots.mid.seed.{name}"]
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        for name, grad in alone.items():  # the host gets what it gets with one isolated seed
            if not name.startswith("seed_slots."):
                assert torch.equal(together[name], grad), name


def test_the_candidates_differ_and_a_seeded_run_builds_the_same_ones() -> None:
    first, _ = _models("norm")
    second, _ = _models("norm")
    weights = first.seed_slots["mid"].seed.stack.weight
    assert weights.shape[0] == K
    assert all(not torch.equal(weights[0], weights[k]) for k in range(1, K))
    assert torch.equal(weights, second.seed_slots["mid"].seed.stack.weight)


def test_a_dead_candidate_gets_no_gradient_and_the_others_theirs() -> None:
    tournament, _ = _models("norm")
    x = torch.randn(6, 3, 32, 32)
    cotangent = torch.randn(6, 10)
    before = _grads(tournament, x, cotangent)["seed_slots.mid.seed.stack.weight"]
    tournament.seed_slots["mid"].seed.live[1] = 0.0
    after = _grads(tournament, x, cotangent)["seed_slots.mid.seed.stack.weight"]
    assert torch.equal(after[1], torch.zeros_like(after[1]))
    for k in (0, 2, 3):
        assert torch.equal(after[k], before[k])
