"""Bad inputs that used to be accepted, or that changed state before they failed.

Found while building the README's "Bad input" table and the stateful fuzzer
(``tests/nn/test_fuzz_stateful.py``); each test fails on the code before
its fix.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from esper.errors import (
    AlphaValueError,
    InputDtypeError,
    InputShapeError,
    SeedShapeError,
    StateDictMismatchError,
)
from esper.kasmina import blueprints
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from tests.broken_modules import Widen


def model_with_seed(slots: tuple[str, ...] = ("early", "mid", "late")) -> MorphogeneticModel:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=slots)
    model.germinate_seed("norm", "s1", slot="mid")
    return model


def tensors(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, Tensor)}


def assert_same(before: dict[str, Tensor], model: nn.Module) -> None:
    after = tensors(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("alpha", [torch.tensor(float("nan")), torch.tensor(2.0),
                                   torch.tensor(-0.5), torch.full((2, 1, 1, 1), float("inf"))])
def test_a_tensor_alpha_override_is_range_checked_like_a_number(alpha):
    # Before: only number overrides were checked; a NaN tensor gave NaN logits.
    model = model_with_seed()
    with pytest.raises(AlphaValueError, match=r"must be finite and in \[0, 1\]"):
        model(torch.randn(2, 3, 8, 8), {"mid": alpha})


def test_an_integer_tensor_alpha_override_is_refused():
    # Before: torch.tensor(1) was accepted although SlotState.with_alpha refuses it.
    with pytest.raises(TypeError, match="float tensor"):
        model_with_seed()(torch.randn(2, 3, 8, 8), {"mid": torch.tensor(1)})


def test_a_number_alpha_given_to_a_slot_directly_is_range_checked():
    slot = model_with_seed().seed_slots["mid"]
    with pytest.raises(AlphaValueError, match=r"alpha override must be finite and in \[0, 1\]"):
        slot(torch.randn(2, 8, 4, 4), alpha=float("nan"))


@pytest.mark.parametrize("assign", [False, True])
def test_a_state_dict_that_does_not_fit_loads_nothing(assign):
    # Before: load_state_dict re-created seeds and copied weights until it found the
    # mismatch, then raised with the model half-loaded (seeds moved, host weights replaced).
    model = model_with_seed()
    torch.manual_seed(1)
    other = MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid"))
    other.germinate_seed("attention", "s9", slot="early")
    states, seed = model.slot_states(), model.seed_slots["mid"].seed
    identities = [id(p) for p in model.parameters()]
    before = tensors(model)
    with pytest.raises(StateDictMismatchError, match="nothing was loaded") as info:
        model.load_state_dict(other.state_dict(), assign=assign)
    assert isinstance(info.value, RuntimeError)  # what nn.Module raises, still caught
    assert model.slot_states() == states
    assert model.seed_slots["mid"].seed is seed and model.seed_slots["early"].seed is None
    assert [id(p) for p in model.parameters()] == identities
    assert_same(before, model)


def test_a_state_dict_with_a_wrong_shape_loads_nothing():
    model = model_with_seed()
    state = model.state_dict()
    state["host.head.weight"] = torch.zeros(3, 3)
    before = tensors(model)
    with pytest.raises(StateDictMismatchError, match="size mismatch"):
        model.load_state_dict(state)
    assert_same(before, model)


def test_a_fitting_state_dict_still_loads():
    source, target = model_with_seed(), model_with_seed(("early", "mid", "late"))
    target.prune_seed(slot="mid")
    target.load_state_dict(source.state_dict())
    assert target.slot_states() == source.slot_states()
    assert_same(tensors(source), target)


def test_a_refused_seed_leaves_the_random_generator_alone():
    # Before: building the refused seed drew its initial weights from the global RNG.
    model = model_with_seed()
    blueprints.register(blueprints.BlueprintSpec("widen-regression", "cnn", Widen))
    try:
        rng = torch.get_rng_state()
        with pytest.raises(SeedShapeError):
            model.germinate_seed("widen-regression", "s2", slot="late")
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        blueprints.unregister("cnn", "widen-regression")


def test_a_too_small_image_fails_before_batchnorm_moves():
    # Before: the first blocks ran (updating BatchNorm running statistics in training
    # mode) and MaxPool failed three blocks later with "Output size is too small".
    model = model_with_seed()
    before = tensors(model)
    with pytest.raises(InputShapeError, match="H and W >= 8"):
        model(torch.randn(2, 3, 4, 4))
    assert_same(before, model)


def test_a_wrong_input_dtype_is_named():
    # Before: "expected scalar type Double but found Float" from deep inside a conv.
    model = model_with_seed()
    with pytest.raises(InputDtypeError, match=r"x.to\(torch.float32\)"):
        model(torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_autocast_input_of_another_dtype_is_still_accepted():
    model = model_with_seed()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 3, 8, 8).bfloat16()).shape == (2, 10)
