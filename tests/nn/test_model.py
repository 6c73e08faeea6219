"""MorphogeneticModel: slots on a host, the functional API and persistence."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from esper.kasmina import SlotState, set_alpha, transition
from esper.leyline import SeedStage, SlotTelemetry
from esper.nn.host import CNNHost, TransformerHost
from esper.nn.model import MorphogeneticModel

STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)


def cnn_model(**kwargs) -> MorphogeneticModel:
    torch.manual_seed(0)
    return MorphogeneticModel(CNNHost(base_channels=8), slots=("early", "mid", "late"), **kwargs)


def walk(model: MorphogeneticModel, slot: str, until: SeedStage) -> SlotState:
    for stage in STAGES[: STAGES.index(until) + 1]:
        model.seed_slots[slot].state = transition(model.seed_slots[slot].state, stage)
    return model.seed_slots[slot].state


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


def test_unknown_or_duplicate_slots_are_rejected():
    with pytest.raises(ValueError, match="injection points"):
        MorphogeneticModel(CNNHost(base_channels=8), slots=("middle",))
    with pytest.raises(ValueError, match="duplicates"):
        MorphogeneticModel(CNNHost(base_channels=8), slots=("mid", "mid"))
    with pytest.raises(TypeError, match="HostProtocol"):
        MorphogeneticModel(torch.nn.Linear(2, 2))


def test_dormant_model_equals_bare_host():
    model = cnn_model()
    x = images()
    model.eval()
    assert torch.equal(model(x), model.host(x))


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING])
def test_alpha_zero_override_is_the_host_alone(stage):
    model = cnn_model()
    model.eval()
    x = images()
    host_only = model.host(x)
    model.germinate_seed("conv_light", "s1", slot="mid")
    with torch.no_grad():  # seeds start as the identity; make this one do something
        for p in model.get_seed_parameters("mid"):
            p.add_(torch.randn_like(p))
    walk(model, "mid", stage)
    if stage != SeedStage.TRAINING:
        slot = model.seed_slots["mid"]
        slot.state = set_alpha(slot.state, 0.6)
    assert torch.allclose(model(x, alpha_overrides={"mid": 0.0}), host_only, atol=1e-6)
    if stage != SeedStage.TRAINING:
        assert not torch.allclose(model(x), host_only, atol=1e-4)


def test_alpha_override_validation():
    model = cnn_model()
    with pytest.raises(ValueError, match="unknown slot"):
        model(images(), alpha_overrides={"nowhere": 0.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(images(), alpha_overrides={"mid": 1.5})
    with pytest.raises(TypeError):
        model(images(), alpha_overrides={"mid": "half"})


def test_functional_forward_matches_forward_and_is_pure():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    state = walk(model, "mid", SeedStage.BLENDING)
    model.eval()
    x = images()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    snapshot = {k: v.clone() for k, v in params.items()}
    states = {"mid": state.with_alpha(0.3)}
    states_copy = copy.deepcopy(states)
    with model.seed_slots["mid"].force_alpha(0.3):
        expected = model(x)
    assert torch.allclose(model.functional_forward(params, states, x), expected, atol=1e-6)
    assert all(torch.equal(params[k], snapshot[k]) for k in params)
    assert states == states_copy
    with pytest.raises(ValueError, match="unknown slots"):
        model.functional_forward(params, {"nowhere": state}, x)


def test_parameter_partition_is_complete_and_disjoint():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid", blend_algorithm_id="gated")
    model.germinate_seed("attention", "s2", slot="late")
    seed = {id(p) for p in model.get_seed_parameters()}
    host = {id(p) for p in model.get_host_parameters()}
    assert seed and host and not seed & host
    assert seed | host == {id(p) for p in model.parameters()}
    mid = {id(p) for p in model.get_seed_parameters("mid")}
    gate = {id(p) for p in model.seed_slots["mid"].gate.parameters()}
    assert gate and gate <= mid


def test_step_epoch_validates_everything_before_changing_anything():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    before = model.slot_states()
    with pytest.raises(ValueError, match="unknown slot"):
        model.step_epoch({"mid": SlotTelemetry(50.0), "nowhere": SlotTelemetry(50.0)})
    with pytest.raises(TypeError, match="SlotTelemetry"):
        model.step_epoch({"mid": SlotTelemetry(50.0), "late": {"accuracy": 1.0}})
    assert model.slot_states() == before
    after = model.step_epoch({"mid": SlotTelemetry(50.0)})
    assert after["mid"].stage == SeedStage.TRAINING


def test_prune_seed_and_cull_alias():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    model.cull_seed(slot="mid", reason="test")
    assert model.seed_slots["mid"].state.stage == SeedStage.PRUNED
    assert list(model.get_seed_parameters("mid")) == []


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("blend", ["sigmoid", "gated"])
def test_state_dict_round_trip_recreates_seeds(stage, blend):
    model = cnn_model()
    model.germinate_seed("depthwise", "s1", slot="mid", blend_algorithm_id=blend)
    model.germinate_seed("norm", "s2", slot="early")
    walk(model, "mid", stage)
    model.eval()
    x = images()
    expected = model(x)
    fresh = cnn_model()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert fresh.slot_states() == model.slot_states()
    assert torch.equal(fresh(x), expected)


def test_load_state_dict_accepts_compiled_prefix_and_rejects_junk():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    fresh = cnn_model()
    fresh.load_state_dict(prefixed)
    assert fresh.seed_slots["mid"].state == model.seed_slots["mid"].state
    broken = model.state_dict()
    broken["seed_slots.mid._extra_state"] = {"state": {"stage": "TRAINING"}}
    with pytest.raises(ValueError, match="missing keys"):
        cnn_model().load_state_dict(broken)


def test_fossilized_seed_passes_gradient_to_earlier_host_blocks():
    model = cnn_model()
    model.germinate_seed("conv_light", "s1", slot="mid")
    walk(model, "mid", SeedStage.FOSSILIZED)
    x = images()
    y = torch.randint(0, 10, (4,))
    # Through the seed only: the direct host path has weight 1 - a = 0 when fossilized.
    F.cross_entropy(model(x), y).backward()
    first_block = next(model.host.parameters())
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0


def test_transformer_model_runs_every_stage():
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=32, n_embd=32, n_head=2, n_layer=3, block_size=16)
    model = MorphogeneticModel(host, slots=("mid",))
    tokens = torch.randint(0, 32, (2, 16))
    model.germinate_seed("lora", "s1", slot="mid")
    for stage in STAGES:
        model.seed_slots["mid"].state = transition(model.seed_slots["mid"].state, stage)
        logits = model(tokens)
        assert logits.shape == (2, 16, 32) and torch.isfinite(logits).all()
    assert model.seed_slots["mid"].state.isolate is False


def test_forward_reports_features_at_seeded_slots_only():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    model.eval()
    x = images()
    out, features, health = model(x, aux=True)
    assert list(features) == ["mid"] and list(health) == ["mid"]
    with torch.no_grad():
        h = model.host.run_segment("early", x)
        h = model.host.run_segment("mid", h)
    torch.testing.assert_close(features["mid"], h)
    torch.testing.assert_close(out, model(x))


def test_probe_isolation_on_features_matches_probe_on_input():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    model.germinate_seed("conv_light", "s2", slot="late")
    walk(model, "mid", SeedStage.TRAINING)
    x = images(8)
    model.eval()
    with torch.no_grad():
        features = model(x, aux=True).features
    model.train()
    from_input = model.probe_isolation(x, generator=torch.Generator().manual_seed(3))
    from_features = model.probe_isolation(features=features,
                                          generator=torch.Generator().manual_seed(3))
    assert set(from_input) == set(from_features) == {"mid", "late"}
    for name in from_input:
        assert from_input[name].leak == pytest.approx(from_features[name].leak, abs=1e-9)
        assert not from_features[name].violated
    assert model.training and all(s.training for s in model.seed_slots.values())


def test_probe_isolation_rejects_ambiguous_or_incomplete_input():
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    x = images()
    with pytest.raises(ValueError, match="exactly one of x"):
        model.probe_isolation()
    with pytest.raises(ValueError, match="exactly one of x"):
        model.probe_isolation(x, features={"mid": x})
    with pytest.raises(ValueError, match=r"features missing for seeded slots \['mid'\]"):
        model.probe_isolation(features={"early": x})
    assert model.seed_slots["mid"].state.metrics.isolation_violations == 0
