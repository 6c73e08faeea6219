"""esper.save / esper.load: a grafted model round-trips into a freshly built base model.

ResNet-18 (cnn), an nn.Sequential MLP and nanoGPT (transformer): the loaded
model computes bit-identical outputs, holds the same slot states and
optimizer state; a base model that does not fit the saved graft is refused
with GraftMismatchError and given back as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import esper
from esper import CheckpointError, GraftMismatchError
from esper.checkpoint import load_checkpoint, save_checkpoint
from esper.core.lifecycle import set_alpha, transition
from esper.leyline import SeedStage
from esper.optim import OptimizerState
from tests.graft_models import gpt, images, mlp, resnet18, tokens, vectors

CASES: dict[str, tuple[Callable[..., nn.Module], Callable[[], Tensor], tuple[str, ...], str]] = {
    "resnet": (resnet18, images, ("layer1", "layer3.0", "layer4"), "conv_light"),
    "mlp": (mlp, vectors, ("1", "3"), "lowrank"),
    "gpt": (gpt, tokens, ("transformer.h.0", "transformer.h.2.mlp"), "lora"),
}


def trained(name: str) -> tuple[esper.nn.MorphogeneticModel, Tensor]:
    """A grafted model with one seed BLENDING at alpha 0.5 and another GERMINATED, host and
    seed weights moved off their initial values."""
    make, inputs, points, blueprint = CASES[name]
    x = inputs()
    model = esper.graft(make(), points, example_input=x)
    model.germinate_seed(blueprint, "s1", slot=points[0])
    model.germinate_seed("noop", "s2", slot=points[-1])
    slot = model.seed_slots[points[0]]
    for stage in (SeedStage.TRAINING, SeedStage.BLENDING):
        slot.state = transition(slot.state, stage)
    slot.state = set_alpha(slot.state, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval(), x


@pytest.mark.parametrize("name", CASES)
def test_a_grafted_model_round_trips_bit_identically(name: str, tmp_path: Path) -> None:
    model, x = trained(name)
    esper.save(model, tmp_path / "ckpt")
    make = CASES[name][0]
    loaded = esper.load(make(seed=7), tmp_path / "ckpt").eval()  # other initial weights
    assert torch.equal(loaded(x), model(x))
    assert loaded.slot_states() == model.slot_states()
    assert loaded.graft_description() == model.graft_description()
    for (k, p), (_, q) in zip(loaded.state_dict().items(), model.state_dict().items(),
                              strict=True):
        if isinstance(p, Tensor):
            assert torch.equal(p, q), k


def test_the_optimizer_and_trainer_state_come_back_with_the_graft(tmp_path: Path) -> None:
    model, _ = trained("mlp")
    optimizer = OptimizerState().synced(model)
    momenta = {k: torch.randn_like(v) for k, v in optimizer.buffers["momentum"].items()}
    optimizer = OptimizerState(optimizer.config, optimizer.groups, {"momentum": momenta})
    save_checkpoint(tmp_path / "c", model=model, optimizer=optimizer, trainer_state={"epoch": 4})
    document = json.loads(next((tmp_path / "c").glob("ckpt-*/checkpoint.json")).read_text())
    assert document["schema_version"] == 3 and document["host"]["kind"] == "grafted"
    restored = load_checkpoint(tmp_path / "c", base_model=mlp(seed=3))
    assert restored.trainer_state == {"epoch": 4}
    assert restored.optimizer is not None and restored.optimizer.groups == optimizer.groups
    kept = restored.optimizer.buffers["momentum"]
    assert all(torch.equal(kept[k], v) for k, v in momenta.items())


def _unchanged(base: nn.Module) -> Callable[[], None]:
    before = {k: v.clone() for k, v in base.state_dict().items()}
    hooks = [len(m._forward_hooks) for m in base.modules()]

    def check() -> None:
        assert [len(m._forward_hooks) for m in base.modules()] == hooks  # not grafted
        after = base.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items())

    return check


@pytest.mark.parametrize(("base", "match"), [
    (lambda: mlp(width=24), r"point '1' \(1\): channels 16 saved, 24 now"),
    (lambda: nn.Sequential(nn.Linear(8, 16)), r"not take the graft.*point '1' names no submodule"),
    (lambda: gpt(), r"not take the graft"),
])
def test_a_base_model_that_does_not_fit_is_refused_and_given_back(
        base: Callable[[], nn.Module], match: str, tmp_path: Path) -> None:
    model, _ = trained("mlp")
    esper.save(model, tmp_path / "ckpt")
    fresh = base()
    check = _unchanged(fresh)
    with pytest.raises(GraftMismatchError, match=match):
        esper.load(fresh, tmp_path / "ckpt")
    check()


def test_weights_that_do_not_fit_leave_the_base_model_as_it_was(tmp_path: Path) -> None:
    """Same points and features, other host parameters: refused after the graft, undone."""
    model, _ = trained("mlp")
    esper.save(model, tmp_path / "ckpt")

    fresh = mlp(seed=2)
    fresh.add_module("extra", nn.Identity())
    fresh.register_parameter("unused", nn.Parameter(torch.zeros(3)))
    check = _unchanged(fresh)
    with pytest.raises(CheckpointError, match="unused"):
        esper.load(fresh, tmp_path / "ckpt")
    check()


def test_which_checkpoints_take_a_base_model(tmp_path: Path) -> None:
    model, _ = trained("mlp")
    esper.save(model, tmp_path / "grafted")
    with pytest.raises(CheckpointError, match=r"needs the base model.*esper.load"):
        load_checkpoint(tmp_path / "grafted")
    built_in = esper.nn.MorphogeneticModel(esper.nn.host.CNNHost(base_channels=4))
    esper.save(built_in, tmp_path / "built_in")
    with pytest.raises(CheckpointError, match="rebuilds its host; pass no base model"):
        esper.load(mlp(), tmp_path / "built_in")
    assert esper.load(None, tmp_path / "built_in").graft_description()["points"].keys() == {"mid"}
