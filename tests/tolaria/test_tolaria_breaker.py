"""The circuit breaker in training: a non-finite seed never corrupts the host."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.breaker import BreakerConfig, BreakerState
from esper.data import load_task
from esper.kasmina import transition
from esper.leyline import EventType, SeedStage
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.inputs import StepInputs, StepOptions
from esper.tolaria.step import group_finite, train_step
from esper.tolaria.trainer import Trainer

IDLE = ControllerConfig(warmup_epochs=100)  # the heuristic never germinates by itself


def poison(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


def seeded_model(stage: SeedStage = SeedStage.TRAINING) -> MorphogeneticModel:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid"))
    model.germinate_seed("conv_light", "s1", slot="mid")
    slot = model.seed_slots["mid"]
    for s in (SeedStage.TRAINING, SeedStage.BLENDING)[: 1 + (stage is SeedStage.BLENDING)]:
        slot.state = transition(slot.state, s)
    return model


def one_step(model: MorphogeneticModel, step=train_step, measure: bool = True):
    optimizer = OptimizerState(SGDConfig(momentum=0.9, weight_decay=5e-4)).synced(model)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    result = step(model, StepInputs.of(model, optimizer), x, y, StepOptions(measure=measure))
    return result, optimizer


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING])
@pytest.mark.parametrize("measure", [True, False])
def test_nan_seed_skips_its_own_update_and_the_host_trains(stage, measure):
    model = seeded_model(stage)
    poison(model.seed_slots["mid"].seed)
    before = copy.deepcopy(dict(model.named_parameters()))
    result, optimizer = one_step(model, measure=measure)
    assert result.loss.isfinite()  # the seed's NaN never reaches the loss
    assert result.updated.tolist() == [True, False] and result.faults.tolist() == [True]
    for name, p in model.named_parameters():
        if name.startswith("seed_slots."):
            assert p.isnan().all() and not optimizer.buffers["momentum"][name].any(), name
        else:
            assert p.isfinite().all() and optimizer.buffers["momentum"][name].isfinite().all(), name
    assert not torch.equal(before["host.head.weight"], model.host.head.weight)


def test_healthy_step_updates_everything_and_blames_no_one():
    model = seeded_model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    result, _ = one_step(model)
    assert result.updated.tolist() == [True, True] and result.faults.tolist() == [False]
    assert not torch.equal(before["host.head.weight"], model.host.head.weight)


def test_nan_from_the_host_is_not_the_seeds_fault():
    model = seeded_model()
    with torch.no_grad():
        next(model.host.blocks[0].parameters()).fill_(float("nan"))
    result, _ = one_step(model)
    assert result.updated.tolist() == [False, False]
    assert result.faults.tolist() == [False]  # its input was already non-finite


def test_compiled_step_gives_the_same_flags_in_one_graph():
    model = seeded_model()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(train_step, fullgraph=True, dynamic=False, backend=counter)
    healthy, _ = one_step(model, compiled)
    poison(model.seed_slots["mid"].seed)
    sick, _ = one_step(model, compiled)
    assert counter.frame_count == 1
    assert healthy.updated.tolist() == [True, True] and sick.updated.tolist() == [True, False]
    assert sick.faults.tolist() == [True]


def test_group_finite_flags_each_group():
    grads = {"a": torch.ones(3), "b": torch.tensor([1.0, float("inf")]), "c": torch.zeros(2)}
    assert group_finite(grads, (("a",), ("b", "c"), ())).tolist() == [True, False, True]


def trainer(tmp_path: Path) -> Trainer:
    config = GrowConfig(epochs=4, out=tmp_path, limit=96, compile=False, quiet=True,
                        controller=IDLE, max_seeds=1, slots=("mid",),
                        breaker=BreakerConfig(cooldown_steps=1000))
    events: list[dict] = []
    t = Trainer(config, load_task("digits", limit=96), sink=events.append)
    t.events = events  # type: ignore[attr-defined]
    return t


def test_trainer_opens_the_breaker_and_prunes_the_seed_at_the_epoch_end(tmp_path):
    t = trainer(tmp_path)
    t.model.germinate_seed("conv_light", "bad", slot="mid")
    t.breakers["mid"] = BreakerState("mid", seed_id="bad")
    t.optimizer = t.optimizer.synced(t.model)
    poison(t.model.seed_slots["mid"].seed)
    host_before = {k: v.clone() for k, v in t.model.host.named_parameters()}
    t.run_epoch()
    assert all(not torch.equal(p, host_before[n]) for n, p in t.model.host.named_parameters())
    changes = [e for e in t.events if e.get("type") == EventType.BREAKER_CHANGED.value]
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in changes] == [("CLOSED", "OPEN")]
    assert changes[0]["payload"]["reason"] == "non_finite" and changes[0]["seed_id"] == "bad"
    pruned = [e for e in t.events if e.get("type") == EventType.SEED_PRUNED.value]
    assert len(pruned) == 1 and pruned[0]["payload"]["reason"] == "non_finite"
    assert t.breakers["mid"].status == "CLOSED"
    skipped = [e for e in t.events if e["kind"] == "safety"]
    assert skipped and "host" not in skipped[0]["skipped_updates"]  # the host never paused
    assert skipped[0]["skipped_updates"]["mid"] > 0


def test_manual_override_emits_an_event_and_rejects_unknown_slots(tmp_path):
    t = trainer(tmp_path)
    t.override_breaker("mid", "OPEN", "operator")
    t.override_breaker("mid", "HALF_OPEN", "operator")
    t.override_breaker("mid", "HALF_OPEN", "operator")  # unchanged, still an event
    changes = [e["payload"] for e in t.events if e.get("type") == EventType.BREAKER_CHANGED.value]
    assert [(c["from"], c["to"], c["forced"]) for c in changes] == [
        ("CLOSED", "OPEN", True), ("OPEN", "HALF_OPEN", True), ("HALF_OPEN", "HALF_OPEN", True)]
    with pytest.raises(ValueError, match="unknown slot 'late'"):
        t.override_breaker("late", "OPEN", "operator")
    with pytest.raises(ValueError, match="status must be one of"):
        t.override_breaker("mid", "BROKEN", "operator")  # type: ignore[arg-type]
