"""esper.graft on models that know nothing of Esper: a ResNet-18, an MLP and a nanoGPT.

The grafted model's output is the original's, bit for bit, while no seed is
blended in; gradients follow the slot formula; the trainer-facing API works
on module-path slots; the state_dict round-trips into a fresh graft.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import esper
from esper.errors import UnboundSeedWarning
from esper.kasmina import GraftPoint, set_alpha, transition
from esper.leyline import SeedStage, SlotTelemetry
from esper.nn import MorphogeneticModel, blueprints
from tests.graft_models import gpt, images, mlp, resnet18, tokens, vectors

STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)


@dataclass(frozen=True)
class Case:
    make: Callable[..., nn.Module]
    inputs: Callable[[], Tensor]
    points: tuple[str, ...]
    layout: str
    blueprint: str  # a seed with parameters, identity at start


CASES = {
    "resnet": Case(resnet18, images, ("layer1", "layer2", "layer3.0", "layer4"), "cnn",
                   "conv_light"),
    "resnet-stages": Case(resnet18, images, ("layer1", "layer2", "layer3", "layer4"), "cnn",
                          "norm"),  # layer3 itself: points may not nest, so a graft of its own
    "mlp": Case(mlp, vectors, ("1", "3"), "mlp", "lowrank"),
    "gpt": Case(gpt, tokens, ("transformer.h.0", "transformer.h.1", "transformer.h.2.mlp"),
                "transformer", "lora"),
}


def grafted(case: Case, **kwargs: object) -> tuple[nn.Module, MorphogeneticModel, Tensor]:
    """The original (a copy kept aside), the grafted model and an input."""
    net = case.make()
    original = copy.deepcopy(net)
    x = case.inputs()
    return original, esper.graft(net, case.points, example_input=x, **kwargs), x


def randomize(model: MorphogeneticModel, slot: str) -> None:
    with torch.no_grad():
        for p in model.get_seed_parameters(slot):
            p.add_(0.1 * torch.randn_like(p))


def walk(model: MorphogeneticModel, slot: str, until: SeedStage) -> None:
    for stage in STAGES[: STAGES.index(until) + 1]:
        model.seed_slots[slot].state = transition(model.seed_slots[slot].state, stage)


@pytest.mark.parametrize("name", CASES)
def test_slots_are_named_and_measured_by_module_path(name: str) -> None:
    case = CASES[name]
    _, model, _ = grafted(case)
    assert list(model.seed_slots) == list(case.points)  # forward order
    assert all(p in model.seed_slots for p in case.points) and len(model.seed_slots) == len(
        case.points)
    description = model.graft_description()
    assert description["alpha_mode"] == "scalar"
    for point, slot in model.seed_slots.items():
        assert slot.topology == case.layout and slot.slot_id == point
        info = description["points"][point]
        assert info["module"] == point and info["layout"] == case.layout
        assert info["channels"] == slot.channels and tuple(info["feature_shape"]) == (
            slot.feature_shape) and slot.site.feature_shape == slot.feature_shape
        assert info["isolate"] is (case.layout != "transformer")
    host_keys = [k for k in model.state_dict() if k.startswith("host.")]
    assert host_keys == [f"host.{k}" for k in case.make().state_dict()]


@pytest.mark.parametrize("name", CASES)
def test_dormant_and_training_outputs_are_the_original_bit_for_bit(name: str) -> None:
    case = CASES[name]
    original, model, x = grafted(case)
    for mode in ("eval", "train"):  # in train mode both move their BatchNorm statistics
        getattr(original, mode)()
        getattr(model, mode)()
        assert torch.equal(model(x), original(x))
    original.eval()
    model.eval()
    for point in case.points:
        model.germinate_seed("noop", f"n-{point}", slot=point)
    assert torch.equal(model(x), original(x))
    original, model, _ = grafted(case)
    original.eval()
    model.eval()
    for point in case.points:
        model.germinate_seed(case.blueprint, f"s-{point}", slot=point)
        randomize(model, point)
        walk(model, point, SeedStage.TRAINING)
    assert torch.equal(model(x), original(x))
    assert torch.equal(model.host(x), original(x))  # the host called alone is the host


@pytest.mark.parametrize("name", CASES)
def test_training_gradients_reach_the_host_as_without_the_seed(name: str) -> None:
    case = CASES[name]
    original, model, x = grafted(case)
    original.eval()
    model.eval()
    point = case.points[-1]
    model.germinate_seed(case.blueprint, "s1", slot=point)
    randomize(model, point)
    walk(model, point, SeedStage.TRAINING)
    model(x).square().sum().backward()
    original(x).square().sum().backward()
    for (name_, p), (_, q) in zip(model.host.named_parameters(), original.named_parameters(),
                                  strict=True):
        assert torch.equal(p.grad, q.grad), name_
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.get_seed_parameters(point))


def test_blending_output_is_the_lerp_at_the_point() -> None:
    case = CASES["mlp"]
    original, model, x = grafted(case)
    model.germinate_seed("lowrank", "s1", slot="3")
    randomize(model, "3")
    walk(model, "3", SeedStage.BLENDING)
    slot = model.seed_slots["3"]
    slot.state = set_alpha(slot.state, 0.25)
    with torch.no_grad():
        h = original[:4](x)
        expected = original[4](torch.lerp(h, slot.seed(h), 0.25))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(x, alpha_overrides={"3": 0.0}), original(x),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_every_blueprint_of_the_layout_germinates_and_trains_at_every_point(name: str) -> None:
    """No seed passes germination and then crashes: each one, blended in at every point,
    runs forward and backward on the model's real features with finite gradients."""
    case = CASES[name]
    for blueprint in blueprints.names(case.layout):
        _, model, x = grafted(case)
        for point in case.points:
            state = model.germinate_seed(blueprint, f"{blueprint}-{point}", slot=point)
            assert state.stage == SeedStage.GERMINATED and model.seed_slots[point].seed is not None
            walk(model, point, SeedStage.BLENDING)
            slot = model.seed_slots[point]
            slot.state = set_alpha(slot.state, 0.5)
        out = model(x)
        assert out.shape == case.make()(x).shape and bool(out.isfinite().all()), blueprint
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(g.isfinite().all()) for g in grads), blueprint


@pytest.mark.parametrize("name", CASES)
def test_state_dict_round_trips_into_a_fresh_graft(name: str) -> None:
    case = CASES[name]
    _, model, x = grafted(case)
    point = case.points[0]
    model.germinate_seed(case.blueprint, "s1", slot=point)
    randomize(model, point)
    walk(model, point, SeedStage.BLENDING)
    model.eval()
    saved = model.state_dict()
    assert any(k.startswith(f"seed_slots.{point.replace('.', '-')}.seed.") for k in saved)
    fresh = esper.graft(case.make(seed=5), case.points, example_input=x)
    fresh.load_state_dict(saved)
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert fresh.seed_slots[point].state.stage == SeedStage.BLENDING


def test_the_trainer_facing_api_on_module_path_slots() -> None:
    case = CASES["resnet"]
    _, model, x = grafted(case)
    model.germinate_seed("conv_light", "s1", slot="layer3.0")
    model.germinate_seed("norm", "s2", slot="layer2")
    walk(model, "layer3.0", SeedStage.TRAINING)
    with pytest.warns(UnboundSeedWarning, match="'s1' in slot 'layer3.0' did not train"):
        states = model.step_epoch({"layer3.0": SlotTelemetry(50.0),
                                   "layer2": SlotTelemetry(50.0)})
    assert states["layer3.0"].stage == SeedStage.TRAINING
    assert model.seed_slots["layer2"].state.stage == SeedStage.TRAINING
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    out = model.functional_forward(params, model.slot_states(), x, buffers, aux=True)
    assert list(out.features) == ["layer2", "layer3.0"] and set(out.health) == set(out.features)
    reports = model.probe_isolation(features=out.features)
    assert set(reports) == {"layer2", "layer3.0"}
    assert set(model.probe_isolation(x)) == {"layer2", "layer3.0"}
    model.eval()
    torch.testing.assert_close(model(x, alpha_overrides={"layer3.0": 0.0}), model(x))
    model.prune_seed(slot="layer2")
    assert model.seed_slots["layer2"].seed is None


def test_select_grafts_onto_one_element_of_a_tuple_or_dict_output() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.lin(x), x.sum(dim=1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair, self.head = Pair(), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            h, total = self.pair(x)
            return {"logits": self.head(h) + total[:, None]}

    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 4)
    reference = net(x)["logits"]
    model = esper.graft(net, {"pair": GraftPoint(select=0)}, example_input=x)
    assert torch.equal(model(x)["logits"], reference)
    model.germinate_seed("lowrank", "s1", slot="pair")
    randomize(model, "pair")
    walk(model, "pair", SeedStage.FOSSILIZED)
    assert not torch.allclose(model(x)["logits"], reference)


def test_isolation_follows_the_point_not_only_the_layout() -> None:
    net, x = mlp(), vectors()
    model = esper.graft(net, {"1": GraftPoint(isolate=False), "3": None}, example_input=x)
    assert model.seed_slots["1"].state.isolate is False
    assert model.seed_slots["3"].state.isolate is True
    model.germinate_seed("lowrank", "s1", slot="1")
    walk(model, "1", SeedStage.BLENDING)
    assert float(model.seed_slots["1"].state.g) == 0.0


def test_variable_sequence_length_runs_without_a_new_graft() -> None:
    original, model, _ = grafted(CASES["gpt"])
    for t in (3, 11):
        x = tokens(t=t)
        assert torch.equal(model(x), original(x))


def test_ungraft_gives_the_host_back_and_a_copy_keeps_its_own_hooks() -> None:
    original, model, x = grafted(CASES["mlp"])
    twin = copy.deepcopy(model)
    model.germinate_seed("lowrank", "s1", slot="3")
    randomize(model, "3")
    walk(model, "3", SeedStage.FOSSILIZED)
    assert torch.equal(twin(x), original(x))  # the copy's hooks run the copy's slots
    host = model.ungraft()
    assert torch.equal(host(x), original(x))
    with pytest.raises(RuntimeError, match="ungrafted"):
        model(x)
    again = esper.graft(host, ["1"], example_input=x)
    assert torch.equal(again(x), original(x))


def test_graft_on_a_device_and_the_root_exports() -> None:
    model = esper.graft(mlp(), ["1"], example_input=vectors(), device="cpu")
    assert model.seed_slots["1"].device == torch.device("cpu")
    assert esper.graft is esper.nn.graft and esper.GraftPoint is GraftPoint
    from esper.kasmina.host import CNNHost, MorphogeneticModel

    assert MorphogeneticModel is esper.nn.MorphogeneticModel
    assert list(MorphogeneticModel(CNNHost(base_channels=4), slots=("mid",)).seed_slots) == [
        "mid"]


def test_slot_dict_speaks_real_names_and_stores_escaped_keys() -> None:
    from esper.nn.slot_dict import SlotDict

    slots = SlotDict([("layer3.0", nn.Identity()), ("mid", nn.ReLU())])
    assert list(slots) == list(slots.keys()) == ["layer3.0", "mid"] and len(slots) == 2
    assert "layer3.0" in slots and "layer3-0" not in slots
    assert [name for name, _ in slots.items()] == ["layer3.0", "mid"]
    assert list(slots._modules) == ["layer3-0", "mid"] and slots.key_of("layer3.0") == "layer3-0"
    assert isinstance(slots["layer3.0"], nn.Identity) and len(slots.values()) == 2
    with pytest.raises(ValueError, match="without '-'"):
        slots["layer3-0"] = nn.Identity()
    del slots["layer3.0"]
    assert list(slots) == ["mid"] and list(slots._modules) == ["mid"]
    with pytest.raises(KeyError):
        slots["layer3.0"]


def test_isolation_defaults_by_layout_and_overrides_in_the_core() -> None:
    from esper.kasmina import SlotState
    from esper.leyline import TaskConfig

    assert TaskConfig(topology="mlp").isolate_while_blending is True
    assert SlotState.dormant("a", channels=4, task=TaskConfig(topology="mlp")).isolate is True
    assert SlotState.dormant("a", channels=4, isolate=False).isolate is False
    with pytest.raises(TypeError, match="isolate"):
        SlotState.dormant("a", channels=4, isolate=1)  # type: ignore[arg-type]


def test_a_model_without_slots_runs_until_it_is_ungrafted() -> None:
    """``esper grow --max-seeds 0`` trains a model with no slots: it is grafted (no points),
    not ungrafted, so it runs as its host does; after ``ungraft()`` it refuses."""
    from esper.nn.host import CNNHost

    torch.manual_seed(0)
    host = CNNHost(base_channels=4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = host(x)
    model = MorphogeneticModel(host, slots=())
    assert len(model.seed_slots) == 0 and torch.equal(model(x), expected)
    model.ungraft()
    with pytest.raises(RuntimeError, match="ungrafted"):
        model(x)
