"""esper.optim.bind: a grafted model's seeds in the user's own torch optimizer and schedulers.

A plain loop (AdamW, CosineAnnealingLR, GradScaler) over an ``esper.graft``-ed MLP: the
seed trains from its first TRAINING step, its group follows the host's schedule, a pruned
seed leaves the optimizer with its state, a resumed run continues bit for bit, and the
stage changes recompile nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, OneCycleLR

import esper
from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.nn import MorphogeneticModel
from esper.optim import Binding, UnboundSeedWarning, bind
from tests.graft_models import mlp, vectors

LIFE = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam-foreach": lambda p: Adam(p, lr=1e-2, foreach=True),
    "adamw-foreach": lambda p: AdamW(p, lr=1e-2, weight_decay=0.01, foreach=True),
    "adamw-loop": lambda p: AdamW(p, lr=1e-2, weight_decay=0.01, foreach=False, fused=False),
    "adamw-fused": lambda p: AdamW(p, lr=1e-2, weight_decay=0.01, fused=True),
}


def grafted() -> MorphogeneticModel:
    return esper.graft(mlp(), ["1", "3"], example_input=vectors())


def batch(step: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def train_step(model: Any, optimizer: Optimizer, scheduler: Any, scaler: Any, step: int,
               dtype: torch.dtype | None = None) -> None:
    """One step of the user's loop, under bf16 autocast when ``dtype`` says so."""
    x, y = batch(step)
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def advance(model: MorphogeneticModel, slot: str, stage: SeedStage) -> None:
    model.seed_slots[slot].state = transition(model.seed_slots[slot].state, stage)


def seed_params(model: MorphogeneticModel, slot: str) -> list[Tensor]:
    return [p.detach().clone() for p in model.get_seed_parameters(slot)]


def all_moved(before: list[Tensor], model: MorphogeneticModel, slot: str) -> bool:
    return all(not torch.equal(a, b) for a, b in zip(before, model.get_seed_parameters(slot),
                                                     strict=True))


def hyper(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def make(kind: str = "adamw-foreach") -> tuple[MorphogeneticModel, Optimizer, Any, Any]:
    model = grafted()
    try:
        optimizer = OPTIMIZERS[kind](model.parameters())
    except (RuntimeError, ValueError) as error:  # fused needs a device that has it
        pytest.skip(f"{kind} unavailable here: {error}")
    return model, optimizer, CosineAnnealingLR(optimizer, T_max=20), torch.amp.GradScaler("cpu")


@pytest.mark.parametrize(("kind", "dtype"), [*((k, None) for k in OPTIMIZERS),
                                             ("adamw-foreach", torch.bfloat16)])
def test_seed_trains_through_its_lifecycle_in_the_users_optimizer(
        kind: str, dtype: torch.dtype | None) -> None:
    model, optimizer, scheduler, scaler = make(kind)
    binding = bind(optimizer, model, schedulers=[scheduler])
    for step in range(3):
        train_step(model, optimizer, scheduler, scaler, step, dtype)
    model.germinate_seed("lowrank", "s1", slot="3")
    assert len(optimizer.param_groups) == 2
    assert hyper(optimizer.param_groups[1]) == hyper(optimizer.param_groups[0])
    assert binding.group("3") is optimizer.param_groups[1]
    assert [id(p) for p in binding.group("3")["params"]] == [  # type: ignore[index]
        id(p) for p in model.get_seed_parameters("3")]
    advance(model, "3", SeedStage.TRAINING)
    up = model.seed_slots["3"].seed.up.weight  # type: ignore[union-attr]
    before = up.detach().clone()
    train_step(model, optimizer, scheduler, scaler, 3, dtype)   # the first TRAINING step
    assert not torch.equal(up, before) and all(p in optimizer.state
                                               for p in model.get_seed_parameters("3"))
    for step, stage in enumerate(LIFE[1:], start=4):
        snapshot = seed_params(model, "3")
        for inner in range(2):
            train_step(model, optimizer, scheduler, scaler, 2 * step + inner, dtype)
            lrs = [group["lr"] for group in optimizer.param_groups]
            assert lrs[1] == lrs[0] and lrs[0] == scheduler.get_last_lr()[0]
        assert all_moved(snapshot, model, "3"), stage
        advance(model, "3", stage)
    assert model.seed_slots["3"].state.stage == SeedStage.FOSSILIZED
    assert len(optimizer.param_groups) == 2 and binding.group("3") is not None
    assert len(scheduler.base_lrs) == 2


def test_without_bind_the_seed_never_moves() -> None:
    """The failure bind exists for: an optimizer built before germination misses the seed."""
    model, optimizer, scheduler, scaler = make()
    model.germinate_seed("lowrank", "s1", slot="3")
    advance(model, "3", SeedStage.TRAINING)
    before = seed_params(model, "3")
    for step in range(3):
        train_step(model, optimizer, scheduler, scaler, step)
    assert all(torch.equal(a, b)
               for a, b in zip(before, model.get_seed_parameters("3"), strict=True))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_pruned_seed_leaves_the_optimizer_with_its_state(dtype: torch.dtype | None) -> None:
    model, optimizer, scheduler, scaler = make()
    bind(optimizer, model, schedulers=[scheduler])
    model.germinate_seed("lowrank", "s1", slot="3")
    advance(model, "3", SeedStage.TRAINING)
    pruned = list(model.get_seed_parameters("3"))
    before = seed_params(model, "3")
    for step in range(2):
        train_step(model, optimizer, scheduler, scaler, step, dtype)
    assert all_moved(before, model, "3")
    assert all(p in optimizer.state for p in pruned)
    model.prune_seed(slot="3")
    assert len(optimizer.param_groups) == 1 and len(scheduler.base_lrs) == 1
    assert not any(p in optimizer.state for p in pruned)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in held for p in pruned)
    train_step(model, optimizer, scheduler, scaler, 2)
    model.germinate_seed("lowrank", "s2", slot="1")   # another slot, another group
    assert len(optimizer.param_groups) == 2 and len(scheduler.base_lrs) == 2


def test_seed_groups_follow_slot_order_not_germination_order() -> None:
    model, optimizer, scheduler, _ = make()
    binding = bind(optimizer, model, schedulers=[scheduler])
    model.germinate_seed("lowrank", "late", slot="3")
    model.germinate_seed("lowrank", "early", slot="1")
    assert optimizer.param_groups[1] is binding.group("1")
    assert optimizer.param_groups[2] is binding.group("3")


def test_seeds_present_before_bind_get_groups_and_callbacks_chain() -> None:
    model = grafted()
    heard: list[str] = []

    def listen(event: Any) -> None:
        heard.append(event.type.value)

    model.seed_slots["3"].on_telemetry = listen
    model.germinate_seed("lowrank", "s1", slot="3")
    optimizer = SGD(model.get_host_parameters(), lr=0.1)
    binding = bind(optimizer, model)
    assert len(optimizer.param_groups) == 2 and binding.group("3") is optimizer.param_groups[1]
    model.prune_seed(slot="3")
    assert len(optimizer.param_groups) == 1 and heard[-1] == "SEED_PRUNED"
    binding.unbind()
    assert model.seed_slots["3"].on_telemetry is listen
    assert model.seed_slots["1"].on_telemetry is None


def test_seed_lr_and_weight_decay_overrides_follow_the_schedule() -> None:
    model = grafted()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = CosineAnnealingLR(optimizer, T_max=10)
    scaler = torch.amp.GradScaler("cpu")
    bind(optimizer, model, seed_lr=4e-2, seed_weight_decay=0.0, schedulers=[scheduler])
    for step in range(3):
        train_step(model, optimizer, scheduler, scaler, step)
    model.germinate_seed("lowrank", "s1", slot="3")
    host, seed = optimizer.param_groups
    assert seed["initial_lr"] == 4e-2 and seed["weight_decay"] == 0.0
    assert seed["lr"] == pytest.approx(4 * host["lr"]) and scheduler.base_lrs[1] == 4e-2
    for step in range(3, 8):
        train_step(model, optimizer, scheduler, scaler, step)
        assert seed["lr"] == pytest.approx(4 * host["lr"])


@pytest.mark.parametrize("name", ["onecycle", "lambda"])
def test_a_seed_joining_mid_run_keeps_the_scheduler_stepping(name: str) -> None:
    model = grafted()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler: Any = (OneCycleLR(optimizer, max_lr=0.1, total_steps=20) if name == "onecycle"
                      else LambdaLR(optimizer, lambda epoch: 0.9 ** epoch))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    bind(optimizer, model, schedulers=[scheduler])
    for step in range(4):
        train_step(model, optimizer, scheduler, scaler, step)
    model.germinate_seed("lowrank", "s1", slot="3")
    advance(model, "3", SeedStage.TRAINING)
    for step in range(4, 10):
        train_step(model, optimizer, scheduler, scaler, step)
        host, seed = optimizer.param_groups
        assert seed["lr"] == host["lr"] and seed["momentum"] == host["momentum"]
    model.prune_seed(slot="3")
    train_step(model, optimizer, scheduler, scaler, 10)


def test_bind_warns_about_a_scheduler_it_was_not_given() -> None:
    model = grafted()
    optimizer = SGD(model.parameters(), lr=0.1)
    LambdaLR(optimizer, lambda epoch: 1.0)
    with pytest.warns(UserWarning, match="schedulers=\\[scheduler\\]"):
        bind(optimizer, model)


# --------------------------------------------------------------------------- resume


def lifecycle(model: MorphogeneticModel, step: int) -> None:
    """The run's lifecycle script: what happens before step ``step``."""
    actions: dict[int, Callable[[], object]] = {
        2: lambda: model.germinate_seed("lowrank", "late", slot="3"),
        3: lambda: advance(model, "3", SeedStage.TRAINING),
        5: lambda: model.germinate_seed("lowrank", "early", slot="1"),
        6: lambda: advance(model, "1", SeedStage.TRAINING),
        8: lambda: advance(model, "3", SeedStage.BLENDING),
        11: lambda: model.prune_seed(slot="1"),
        12: lambda: advance(model, "3", SeedStage.HOLDING),
    }
    if step in actions:
        actions[step]()


def fresh() -> tuple[MorphogeneticModel, Optimizer, Any, Any, Binding]:
    model = grafted()
    optimizer = AdamW(model.get_host_parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = CosineAnnealingLR(optimizer, T_max=30)
    scaler = torch.amp.GradScaler("cpu")
    return model, optimizer, scheduler, scaler, bind(optimizer, model, schedulers=[scheduler])


def run(parts: tuple[MorphogeneticModel, Optimizer, Any, Any, Binding], steps: range) -> None:
    model, optimizer, scheduler, scaler, _ = parts
    for step in steps:
        lifecycle(model, step)
        train_step(model, optimizer, scheduler, scaler, step)


def saved(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_resume_mid_lifecycle_is_bit_identical() -> None:
    straight = fresh()
    run(straight, range(15))
    first = fresh()
    run(first, range(7))   # two seeds live, germinated out of slot order
    model_sd, opt_sd, sched_sd, scaler_sd = (saved(part) for part in first[:4])
    model = grafted()
    model.load_state_dict(model_sd)          # the seeds are re-created
    optimizer = AdamW(model.get_host_parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = CosineAnnealingLR(optimizer, T_max=30)
    scaler = torch.amp.GradScaler("cpu")
    binding = bind(optimizer, model, schedulers=[scheduler])
    optimizer.load_state_dict(opt_sd)
    scheduler.load_state_dict(sched_sd)
    scaler.load_state_dict(scaler_sd)
    resumed = (model, optimizer, scheduler, scaler, binding)
    run(resumed, range(7, 15))
    expected = dict(straight[0].named_parameters())
    got = dict(model.named_parameters())
    assert expected.keys() == got.keys()
    for name, value in got.items():
        assert torch.equal(value, expected[name]), name
    assert [g["lr"] for g in optimizer.param_groups] == [
        g["lr"] for g in straight[1].param_groups]


# --------------------------------------------------------------------------- compile


def test_stage_and_alpha_changes_recompile_nothing() -> None:
    model, optimizer, scheduler, scaler = make()
    bind(optimizer, model, schedulers=[scheduler])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    model.germinate_seed("lowrank", "s1", slot="3")
    train_step(compiled, optimizer, scheduler, scaler, 0)
    frames = counter.frame_count
    assert frames >= 1
    before = seed_params(model, "3")
    for step, stage in enumerate(LIFE, start=1):
        advance(model, "3", stage)
        for inner in range(2):
            train_step(compiled, optimizer, scheduler, scaler, 2 * step + inner)
    assert counter.frame_count == frames, "a stage or alpha change recompiled"
    assert all_moved(before, model, "3")


def test_a_seed_leaving_training_outside_the_optimizer_warns() -> None:
    model = grafted()
    optimizer = SGD(model.parameters(), lr=0.1)
    binding = bind(optimizer, model)
    model.germinate_seed("lowrank", "s1", slot="3")
    advance(model, "3", SeedStage.TRAINING)
    optimizer.param_groups.remove(binding.group("3"))   # behind the binding's back
    with pytest.warns(UnboundSeedWarning, match="slot '3' left TRAINING"):
        advance(model, "3", SeedStage.BLENDING)
