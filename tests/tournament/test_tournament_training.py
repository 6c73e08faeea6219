"""A tournament in the training step and the trainer: each candidate trains as it would
alone, a non-finite one is dropped, the best one wins, the rest leave the optimizer, and a
run stopped mid-tournament resumes to the same run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from esper.checkpoint import load_checkpoint
from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig
from esper.tamiyo import ControllerConfig
from esper.tolaria import tournaments
from esper.tolaria.config import GrowConfig
from esper.tolaria.evaluate import validate
from esper.tolaria.inputs import StepInputs, StepOptions
from esper.tolaria.run import grow
from esper.tolaria.step import StepResult, train_step
from tests.tolaria.test_resume_crash import assert_same_run

K = 3
SGD = SGDConfig(lr=0.05, momentum=0.9, weight_decay=5e-4)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    return x, y


def _tournament(blueprint: str = "conv_light") -> MorphogeneticModel:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=8), slots=("mid",))
    model.germinate_seed(blueprint, "t", slot="mid", candidates=K)
    slot = model.seed_slots["mid"]
    slot.state = transition(slot.state, SeedStage.TRAINING)
    return model


def _lone(tournament: MorphogeneticModel, blueprint: str, index: int) -> MorphogeneticModel:
    lone = MorphogeneticModel(CNNHost(base_channels=8), slots=("mid",))
    lone.load_state_dict({k: v for k, v in tournament.state_dict().items()
                          if not k.startswith("seed_slots.")}, strict=False)
    lone.germinate_seed(blueprint, "lone", slot="mid")
    slot = lone.seed_slots["mid"]
    slot.state = transition(slot.state, SeedStage.TRAINING)
    slot.seed.load_state_dict(tournament.seed_slots["mid"].seed.member(index).state_dict())
    return lone


def _steps(model: MorphogeneticModel, count: int, measure: bool = True) -> list[StepResult]:
    optimizer = OptimizerState(SGD).synced(model)
    inputs = StepInputs.of(model, optimizer)
    x, y = _batch()
    results = [train_step(model, inputs, x, y, StepOptions(measure=measure))
               for _ in range(count)]
    assert all(result.loss.isfinite() for result in results)
    return results


@pytest.mark.parametrize("blueprint", ["norm", "conv_light"])
@pytest.mark.parametrize("measure", [True, False])
def test_each_candidate_trains_as_it_would_alone(blueprint: str, measure: bool) -> None:
    tournament = _tournament(blueprint)
    lones = [_lone(tournament, blueprint, k) for k in range(K)]
    together = _steps(tournament, 3, measure=measure)
    stacked = dict(tournament.seed_slots["mid"].seed.stack.named_parameters())
    for k, lone in enumerate(lones):
        alone = _steps(lone, 3, measure=measure)
        if measure:  # the step's per-candidate gradient telemetry is the lone seed's own
            for mine, theirs in zip(together, alone, strict=True):
                torch.testing.assert_close(mine.candidates[k], theirs.squared[1], rtol=1e-4,
                                           atol=1e-9)
        else:
            assert together[0].candidates.numel() == 0
        for name, param in lone.seed_slots["mid"].seed.named_parameters():
            torch.testing.assert_close(stacked[name][k], param, rtol=1e-5, atol=1e-6)
        for (name, mine), (_, theirs) in zip(tournament.host.named_parameters(),
                                             lone.host.named_parameters(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_a_nan_candidate_is_dropped_and_the_others_train_as_before() -> None:
    clean = _tournament()
    poisoned = copy.deepcopy(clean)
    with torch.no_grad():
        poisoned.seed_slots["mid"].seed.stack.conv_in.weight[1].fill_(float("nan"))
    _steps(clean, 2)
    _steps(poisoned, 2)
    stacked = poisoned.seed_slots["mid"].seed
    assert stacked.live.tolist() == [1.0, 0.0, 1.0]
    for name, param in stacked.stack.named_parameters():
        reference = dict(clean.seed_slots["mid"].seed.stack.named_parameters())[name]
        for k in (0, 2):
            assert torch.equal(param[k], reference[k]), (name, k)
    for (name, mine), (_, theirs) in zip(poisoned.host.named_parameters(),
                                         clean.host.named_parameters(), strict=True):
        assert torch.equal(mine, theirs), name
    assert tournaments.commit_drops(poisoned) == []  # two candidates are left
    assert poisoned.seed_slots["mid"].state.dropped == (1,)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()  # the graph count is this test's own
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("count", [2, 4])
def test_one_graph_runs_the_whole_candidate_phase(fresh_dynamo, count: int) -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=8), slots=("mid",))
    model.germinate_seed("norm", "t", slot="mid", candidates=count)  # GERMINATED
    slot = model.seed_slots["mid"]
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(train_step, backend=counter, fullgraph=True)
    optimizer = OptimizerState(SGD).synced(model)
    x, y = _batch()

    def run() -> None:
        step(model, StepInputs.of(model, optimizer), x, y, StepOptions())

    run()
    slot.state = transition(slot.state, SeedStage.TRAINING)
    run()
    with torch.no_grad():  # the step drops a candidate: a value changes, not the graph
        slot.seed.stack.weight[1].fill_(float("nan"))
    run()
    assert slot.seed.live.tolist() == [1.0, 0.0] + [1.0] * (count - 2)
    slot.drop_candidates([1])  # the state records the drop: still the same graph
    run()
    assert counter.frame_count == 1


@pytest.mark.filterwarnings("ignore:seed 't' in slot 'mid' did not train")
def test_the_best_candidate_wins_and_the_losers_leave_the_optimizer() -> None:
    model = _tournament()
    x, y = _batch()
    fit = torch.optim.SGD(model.host.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):  # the host fits the batch: any large change of its features hurts
        fit.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        fit.step()
    stacked = model.seed_slots["mid"].seed
    with torch.no_grad():  # candidates 0 and 1 are noise; 2 is the identity (known best)
        stacked.stack.conv_out.weight[:2].normal_(0.0, 50.0)
        stacked.stack.conv_out.weight[2].zero_()
        stacked.stack.conv_out.bias[2].zero_()
    optimizer = OptimizerState(SGD).synced(model)
    with torch.no_grad():
        for momentum in optimizer.buffers["momentum"].values():
            momentum.copy_(torch.arange(momentum.numel(), dtype=momentum.dtype)
                           .reshape(momentum.shape))
    winner_momentum = {n: optimizer.buffers["momentum"][n][2].clone()
                       for n, _ in model.named_parameters() if ".stack." in n}
    x, y = _batch()
    validation = validate(model, x, y, [], {}, tournaments={"mid": 0.5})
    decided = tournaments.decide(model, optimizer, validation)
    scores = validation.candidate_reductions()["mid"]
    assert scores[2] == pytest.approx(0.0, abs=1e-6) and max(scores[:2]) < 0
    assert model.seed_slots["mid"].state.selection.winner == 2
    assert decided.winners == {"mid": scores[2]}
    synced = decided.optimizer.synced(model)
    assert not any(".stack." in n for n in synced.buffers["momentum"])
    assert set(synced.groups["mid"]) == {n for n, _ in model.named_parameters()
                                         if n.startswith("seed_slots.mid.")}
    for name, value in winner_momentum.items():
        assert torch.equal(synced.buffers["momentum"][name.replace(".stack.", ".")], value)


def _run(out: Path, **changes: object) -> GrowConfig:
    """Seven eager epochs on 96 digits: a tournament of 2 germinates at the end of epoch 2,
    is in TRAINING from the end of epoch 3 and is decided at the end of epoch 5 (dwell 2)."""
    return GrowConfig(epochs=7, limit=96, batch_size=16, compile="never", quiet=True, out=out,
                      max_seeds=1, candidates=2, slots=("mid",), blueprints=("conv_light",),
                      controller=ControllerConfig(warmup_epochs=0, plateau_patience=1,
                                                  plateau_delta=100.0), **changes)


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_a_run_stopped_mid_tournament_resumes_to_the_same_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    grow(_run(reference))
    selected = [e for e in _events(reference) if e.get("type") == "CANDIDATE_SELECTED"]
    assert len(selected) == 1 and selected[0]["epoch"] == 5
    payload = selected[0]["payload"]
    assert len(payload["gradient_ratios"]) == 2 and all(r > 0 for r in payload["gradient_ratios"])
    out = tmp_path / "stopped"
    grow(_run(out, stop_after=4))  # the resumed run's first epoch decides the tournament
    stopped = load_checkpoint(out / "checkpoint").model.seed_slots["mid"].state
    assert stopped.in_tournament and stopped.candidates == 2
    grow(_run(out), resume=out)
    assert_same_run(out, reference, epochs=7)
    grown = load_checkpoint(out / "checkpoint").model
    assert not any(".stack." in n for n, _ in grown.named_parameters())
