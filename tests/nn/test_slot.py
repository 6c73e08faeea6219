"""SeedSlot: the stateful shell around one slot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.kasmina import SlotState, germinate, transition
from esper.kasmina import blueprints as bp
from esper.leyline import EventType, SeedStage, SlotTelemetry, TaskConfig
from esper.nn.slot import SeedSlot, TelemetryCallbackWarning


def make_slot(**kwargs) -> SeedSlot:
    return SeedSlot("mid", 16, memory_format=torch.channels_last, **kwargs)


def host_features() -> torch.Tensor:
    return torch.randn(2, 16, 8, 8).to(memory_format=torch.channels_last)


def test_dormant_slot_is_identity():
    slot = make_slot()
    h = host_features()
    assert slot(h) is h
    assert slot.state.stage == SeedStage.DORMANT
    assert list(slot.parameters()) == []


def test_germinate_builds_seed_and_counts_parameters():
    slot = make_slot()
    state = slot.germinate("norm", "s1")
    assert state.stage == SeedStage.GERMINATED
    assert slot.seed is not None
    assert state.seed_params == sum(p.numel() for p in slot.parameters()) > 0


def test_germinate_occupied_slot_raises_runtime_error():
    slot = make_slot()
    slot.germinate("norm", "s1")
    before = slot.state
    with pytest.raises(RuntimeError, match="not DORMANT"):
        slot.germinate("norm", "s2")
    assert slot.state is before


@pytest.mark.parametrize("blueprint, match", [("no-such-blueprint", "no-such-blueprint"),
                                              ("lora", "lora")])
def test_refused_germination_leaves_slot_unchanged(blueprint, match):
    slot = make_slot()
    before = slot.state
    with pytest.raises(ValueError, match=match):
        slot.germinate(blueprint, "s1")
    assert slot.state is before and slot.seed is None and slot.gate is None


class _Shrink(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1]


def test_shape_changing_seed_is_rejected_naming_both_shapes():
    bp.register(bp.BlueprintSpec("shrink_for_test", "cnn", lambda c: _Shrink(), "bad seed"),
                replace=True)
    slot = make_slot()
    with pytest.raises(ValueError, match="shrink_for_test") as info:
        slot.germinate("shrink_for_test", "s1")
    assert "16" in str(info.value) and "15" in str(info.value)
    assert slot.state.stage == SeedStage.DORMANT and slot.seed is None


def test_state_setter_accepts_same_slot_and_rejects_others():
    slot = make_slot()
    slot.germinate("norm", "s1")
    slot.state = transition(slot.state, SeedStage.TRAINING)
    assert slot.state.stage == SeedStage.TRAINING
    with pytest.raises(ValueError, match="cannot be assigned"):
        slot.state = SlotState.dormant("late", channels=16)
    with pytest.raises(TypeError):
        slot.state = "TRAINING"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="holds a seed"):
        slot.state = SlotState.dormant("mid", channels=16)
    with pytest.raises(ValueError, match="force_alpha"):
        slot.state = slot.state.with_alpha(0.5)


def test_state_of_a_seed_cannot_be_assigned_to_an_empty_slot():
    slot = make_slot()
    seeded = germinate(SlotState.dormant("mid", channels=16), "norm", "s1")
    with pytest.raises(ValueError, match="holds no seed"):
        slot.state = seeded
    assert slot.state.stage == SeedStage.DORMANT


def test_events_reach_callback_and_fast_mode_skips_them():
    seen = []
    slot = make_slot(on_telemetry=seen.append)
    slot.germinate("norm", "s1")
    assert [e.type for e in seen] == [EventType.SEED_GATE_EVALUATED, EventType.SEED_GERMINATED,
                                      EventType.SEED_STAGE_CHANGED]
    quiet = []
    fast = make_slot(on_telemetry=quiet.append, fast_mode=True)
    fast.germinate("norm", "s1")
    assert quiet == []


def test_callback_exception_is_reported_and_state_stands():
    def explode(event):
        raise RuntimeError("listener broke")

    slot = make_slot(on_telemetry=explode)
    with pytest.warns(TelemetryCallbackWarning, match="listener broke"):
        slot.germinate("norm", "s1")
    assert slot.state.stage == SeedStage.GERMINATED and slot.seed is not None


def test_prune_removes_seed_and_fossil_cannot_be_pruned():
    slot = make_slot()
    slot.germinate("norm", "s1")
    slot.prune("manual")
    assert slot.seed is None and list(slot.parameters()) == []
    assert slot.state.stage == SeedStage.PRUNED
    fossil = make_slot()
    fossil.germinate("norm", "s2")
    for stage in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING,
                  SeedStage.FOSSILIZED):
        fossil.state = transition(fossil.state, stage)
    with pytest.raises(ValueError, match="FOSSILIZED"):
        fossil.cull("manual")
    assert fossil.seed is not None


def test_step_epoch_non_finite_prunes_and_drops_seed():
    slot = make_slot()
    slot.germinate("norm", "s1")
    slot.step_epoch(SlotTelemetry(float("nan")))
    assert slot.state.stage == SeedStage.PRUNED and slot.state.prune_reason == "non_finite"
    assert slot.seed is None


def test_force_alpha_nests_and_restores():
    slot = make_slot()
    slot.germinate("norm", "s1")
    slot.state = transition(transition(slot.state, SeedStage.TRAINING), SeedStage.BLENDING)
    original = slot.state
    with slot.force_alpha(0.25):
        assert float(slot.state.alpha) == 0.25
        with slot.force_alpha(0.75):
            assert float(slot.state.alpha) == 0.75
        assert float(slot.state.alpha) == 0.25
        with pytest.raises(RuntimeError, match="force_alpha"):
            slot.prune("inside")
    assert slot.state is original


def test_forward_alpha_override_matches_force_alpha():
    slot = make_slot()
    slot.germinate("conv_light", "s1")
    slot.state = transition(transition(slot.state, SeedStage.TRAINING), SeedStage.BLENDING)
    h = host_features()
    with slot.force_alpha(0.4):
        forced = slot(h)
    assert torch.allclose(slot(h, alpha=0.4), forced)
    assert torch.equal(slot(h, alpha=0.0), h)


def test_to_moves_state_with_module():
    slot = make_slot()
    slot.germinate("norm", "s1")
    slot.to("meta")
    assert slot.state.alpha.device.type == "meta"
    assert slot.device.type == "meta"


def test_task_topology_must_match():
    with pytest.raises(ValueError, match="topology"):
        SeedSlot("mid", 16, topology="cnn", task_config=TaskConfig(topology="transformer"))
