"""The heuristic controller's policy, rule by rule."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import SlotState, fossilize, germinate, step, transition
from esper.leyline import SeedStage, SlotTelemetry, TaskConfig
from esper.tamiyo import (
    ControllerConfig,
    ControllerMemory,
    Decision,
    HeuristicController,
    plateaued,
)

TASK = TaskConfig(max_epochs=10)


def dormant(name: str = "mid") -> SlotState:
    return SlotState.dormant(name, channels=8, task=TASK)


def at(stage: SeedStage, name: str = "mid", **metrics) -> SlotState:
    state = germinate(dormant(name), "norm", f"s-{name}")
    for target in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING):
        if state.stage == stage:
            break
        state = transition(state, target)
    return state.replace(metrics=state.metrics.replace(**metrics)) if metrics else state


def decide(states, accuracies, config=None, memory=None, epoch=None):
    controller = HeuristicController(config or ControllerConfig())
    memory = memory or ControllerMemory(accuracies=tuple(accuracies[:-1]))
    epoch = epoch if epoch is not None else len(accuracies)
    return controller.decide(epoch, accuracies[-1], states, memory)


def test_plateau_detection():
    assert not plateaued([50.0, 51.0], 2, 0.5)  # too short to judge
    assert plateaued([50.0, 60.0, 60.2, 60.1], 2, 0.5)
    assert not plateaued([50.0, 60.0, 60.2, 61.0], 2, 0.5)


def test_germinates_on_plateau_in_first_free_slot_with_blueprints_in_turn():
    states = {"early": at(SeedStage.TRAINING, "early"), "mid": dormant("mid"),
              "late": dormant("late")}
    decisions, memory = decide(states, [50.0, 60.0, 60.1, 60.0])
    assert decisions == [Decision("germinate", "mid", "plateau", "norm", "seed-1", "sigmoid")]
    states["mid"] = at(SeedStage.TRAINING, "mid")
    decisions, memory = HeuristicController().decide(5, 60.0, states, memory)
    assert decisions == [Decision("germinate", "late", "plateau", "conv_light", "seed-2",
                                  "sigmoid")]
    assert memory.germinations == {"mid": 1, "late": 1} and memory.seeds_created == 2


def test_no_germination_while_improving_in_warmup_or_at_the_seed_limit():
    improving = [50.0, 55.0, 60.0, 65.0]
    assert decide({"mid": dormant()}, improving)[0] == []
    flat = [50.0, 50.0, 50.0, 50.0]
    assert decide({"mid": dormant()}, flat, ControllerConfig(warmup_epochs=9))[0] == []
    full = {"early": at(SeedStage.TRAINING, "early"), "mid": dormant()}
    assert decide(full, flat, ControllerConfig(max_seeds=1))[0] == []


def test_per_slot_germination_limit():
    memory = ControllerMemory(accuracies=(50.0, 50.0, 50.0), germinations={"mid": 2})
    assert decide({"mid": dormant()}, [50.0, 50.0, 50.0, 50.0], memory=memory)[0] == []


def held(alpha: float = 1.0, **metrics) -> SlotState:
    """A HOLDING seed at ``alpha`` with ``metrics`` (one epoch in HOLDING unless given)."""
    state = at(SeedStage.HOLDING, **{"epochs_in_stage": 1, **metrics})
    return state.replace(alpha=torch.tensor(alpha))


def test_fossilizes_holding_seed_when_g5_would_pass():
    ready = held(holding_contribution=1.5)
    assert decide({"mid": ready}, [60.0])[0] == [
        Decision("fossilize", "mid", "g5_ready", seed_id="s-mid")]
    unsure = held(holding_contribution=0.5, counterfactual_contribution=5.0)
    assert decide({"mid": unsure}, [60.0])[0] == []


@pytest.mark.parametrize("state", [
    lambda: held(counterfactual_contribution=5.0),  # nothing measured in HOLDING yet
    lambda: held(holding_contribution=5.0, epochs_in_stage=0),
    lambda: held(0.9, holding_contribution=5.0),
])
def test_no_fossilize_before_g5_could_pass(state):
    assert decide({"mid": state()}, [60.0])[0] == []


def test_no_fossilize_for_a_seed_that_entered_holding_this_epoch():
    """The counterfactual of the epoch that reached HOLDING was measured while BLENDING."""
    state = germinate(SlotState.dormant("mid", channels=8, task=TaskConfig(
        max_epochs=10, blending_steps=3)), "norm", "s-mid")
    accuracy = 50.0
    for _ in range(50):
        if state.stage == SeedStage.HOLDING:
            break
        accuracy += 1.0
        state = step(state, SlotTelemetry(accuracy, counterfactual_contribution=50.0,
                                          seed_gradient_norm_ratio=0.5,
                                          probe_loss_reduction=0.01))
    assert float(state.alpha) == 1.0 and state.metrics.counterfactual_contribution == 50.0
    assert decide({"mid": state}, [accuracy])[0] == []
    state = step(state, SlotTelemetry(accuracy, counterfactual_contribution=50.0))
    assert decide({"mid": state}, [accuracy])[0] == [
        Decision("fossilize", "mid", "g5_ready", seed_id="s-mid")]


@pytest.mark.parametrize("stage", [SeedStage.BLENDING, SeedStage.HOLDING])
def test_prunes_negative_counterfactual(stage):
    hurting = at(stage, counterfactual_contribution=-1.5)
    assert decide({"mid": hurting}, [60.0])[0] == [
        Decision("prune", "mid", "negative_counterfactual", seed_id="s-mid")]
    noise = at(stage, counterfactual_contribution=-0.3)  # one sample flipped: not harm
    assert decide({"mid": noise}, [60.0])[0] == []


def test_prunes_stalled_training_seed_and_frees_its_seed_count():
    dwell = TASK.training_dwell
    stalled = at(SeedStage.TRAINING, epochs_in_stage=dwell + 4)
    young = at(SeedStage.TRAINING, epochs_in_stage=dwell + 3)
    assert decide({"mid": young}, [60.0])[0] == []
    decisions, _ = decide({"mid": stalled, "late": dormant("late")}, [50.0, 50.0, 50.0, 50.0],
                          ControllerConfig(max_seeds=1))
    assert decisions[0] == Decision("prune", "mid", "stalled", seed_id="s-mid")
    assert decisions[1].action == "germinate" and decisions[1].slot == "late"


def test_decide_is_pure_and_deterministic():
    states = {"mid": dormant()}
    memory = ControllerMemory(accuracies=(50.0, 50.0, 50.0))
    first = HeuristicController().decide(4, 50.0, states, memory)
    second = HeuristicController().decide(4, 50.0, states, memory)
    assert first == second and memory.accuracies == (50.0, 50.0, 50.0)


def test_a_full_run_of_decisions_drives_a_seed_to_fossilized():
    controller, memory = HeuristicController(ControllerConfig(warmup_epochs=0)), ControllerMemory()
    state = dormant()
    accuracy = 50.0
    for epoch in range(1, 30):
        if state.has_seed:
            accuracy += 0.5
            state = step(state, SlotTelemetry(accuracy, counterfactual_contribution=2.0,
                                              seed_gradient_norm_ratio=0.5,
                                              probe_loss_reduction=0.01))
        for decision in controller.decide(epoch, accuracy, {"mid": state}, memory)[0]:
            if decision.action == "germinate":
                state = germinate(state, decision.blueprint_id, decision.seed_id)
            elif decision.action == "fossilize":
                entered = state.history[-1].epoch
                state, result = fossilize(state, SlotTelemetry(accuracy))
                assert result.passed and state.epoch > entered  # asked only when G5 passes
        memory = controller.decide(epoch, accuracy, {"mid": state}, memory)[1]
        if state.stage == SeedStage.FOSSILIZED:
            break
    assert state.stage == SeedStage.FOSSILIZED


@pytest.mark.parametrize("bad", [dict(blueprints=()), dict(max_seeds=-1),
                                 dict(plateau_patience=0), dict(stall_epochs=1.5)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ControllerConfig(**bad)


def test_decision_validation():
    with pytest.raises(ValueError, match="blueprint_id"):
        Decision("germinate", "mid", "plateau")
    with pytest.raises(ValueError, match="unknown action"):
        Decision("explode", "mid", "why")  # type: ignore[arg-type]
