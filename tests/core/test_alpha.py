"""One alpha validator: ``check_alpha`` itself, and every way alpha enters refusing alike."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from esper.core.alpha import check_alpha
from esper.errors import AlphaShapeError, AlphaValueError
from esper.kasmina import CNNHost, MorphogeneticModel, SlotState, set_alpha, transition
from esper.leyline import SeedStage

C = 4


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 1, 1.0])
def test_a_number_in_range_comes_back_as_a_float(value: float) -> None:
    checked = check_alpha(value, where="slot 'mid'", channels=C)
    assert checked == value and type(checked) is float


@pytest.mark.parametrize("value", [torch.tensor(0.5), torch.full((C,), 0.5),
                                   torch.full((3, 1, 1, 1), 1.0)])
def test_an_override_tensor_in_range_comes_back_unchanged(value: torch.Tensor) -> None:
    assert check_alpha(value, where="slot 'mid'", channels=C) is value


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf, 10**400,
                                   torch.tensor(math.nan), torch.full((C,), 2.0)])
def test_out_of_range_or_non_finite_is_refused_with_the_range(value: object) -> None:
    with pytest.raises(AlphaValueError, match=r"^slot 'mid': alpha override must be finite "
                                              r"and in \[0, 1\], got .*: 0 is the host alone"):
        check_alpha(value, where="slot 'mid'", channels=C)


@pytest.mark.parametrize("value", [True, "0.5", None, [0.5]])
def test_neither_a_number_nor_a_tensor_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="must be a number or a tensor"):
        check_alpha(value, where="slot 'mid'", channels=C)


def test_an_override_must_be_a_float_tensor_of_an_override_shape() -> None:
    with pytest.raises(TypeError, match="must be a float tensor"):
        check_alpha(torch.tensor(1), where="slot 'mid'", channels=C)
    with pytest.raises(AlphaShapeError, match=f"{C} channel values or a per-sample"):
        check_alpha(torch.zeros(C + 1), where="slot 'mid'", channels=C)


def test_a_slots_own_alpha_has_exactly_its_modes_shape() -> None:
    assert check_alpha(torch.zeros(C), where="s", channels=C, mode="channel").shape == (C,)
    with pytest.raises(AlphaShapeError, match=r"scalar alpha must be a float tensor of shape \(\)"):
        check_alpha(torch.zeros(3, 1, 1, 1), where="s", channels=C, mode="scalar")
    with pytest.raises(AlphaShapeError, match="per channel"):
        check_alpha(0.5, where="s", channels=C, mode="channel")
    with pytest.raises(AlphaValueError, match=r"^s: alpha must be finite and in \[0, 1\]"):
        check_alpha(1.5, where="s", channels=C, mode="scalar")


def _blending_model() -> MorphogeneticModel:
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=C), slots=("mid",))
    model.germinate_seed("norm", "s1", slot="mid")
    slot = model.seed_slots["mid"]
    for stage in (SeedStage.TRAINING, SeedStage.BLENDING):
        slot.state = transition(slot.state, stage)
    return model


def _entries(model: MorphogeneticModel) -> dict[str, Callable[[float], object]]:
    slot = model.seed_slots["mid"]
    state: SlotState = slot.state
    x = torch.randn(2, 3, 8, 8)

    def forced(value: float) -> None:
        with slot.force_alpha(value):
            pass

    return {
        "set_alpha": lambda v: set_alpha(state, v),
        "with_alpha": state.with_alpha,
        "force_alpha": forced,
        "slot forward": lambda v: slot(torch.randn(2, slot.channels, 8, 8), alpha=v),
        "model forward": lambda v: model(x, {"mid": v}),
    }


@pytest.mark.parametrize("entry", ["set_alpha", "with_alpha", "force_alpha", "slot forward",
                                   "model forward"])
@pytest.mark.parametrize("value", [1.5, -0.25, math.nan])
def test_every_entry_refuses_out_of_range_alpha_in_the_same_words(entry: str,
                                                                  value: float) -> None:
    model = _blending_model()
    before = model.seed_slots["mid"].state
    with pytest.raises(AlphaValueError, match=r"^slot 'mid': alpha( override)? must be finite "
                                              r"and in \[0, 1\], got .*: 0 is the host alone, "
                                              r"1 the seed alone$"):
        _entries(model)[entry](value)
    assert model.seed_slots["mid"].state is before
