"""A seed in no optimizer: its weights never move, and G2 refuses it, loudly, once.

The user's own loop builds AdamW over ``model.parameters()`` before the seed
germinates and never calls ``esper.optim.bind``: the seed has gradients (so G2's
gradient check passes) but no optimizer step moves it. The slot fingerprints the
seed's weights as it enters TRAINING and compares before G2; the verdict lives in the
state, so it survives ``esper.save``/``esper.load`` and ``state_dict`` round trips.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import AdamW

import esper
from esper.errors import UnboundSeedWarning
from esper.leyline import EventType, SeedStage, SlotTelemetry, TaskConfig
from esper.nn.model import MorphogeneticModel
from esper.optim import bind
from tests.graft_models import mlp

SLOT = "3"
TASK = TaskConfig(topology="mlp", max_epochs=4, embargo_epochs=0)  # G2 after 1 TRAINING epoch
X = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))


class Loop:
    """A user's training loop: their model, their AdamW, events and warnings recorded."""

    def __init__(self, *, bound: bool) -> None:
        self.events: list[Any] = []
        self.model = esper.graft(mlp(), [SLOT], example_input=X, task_config=TASK,
                                 on_telemetry=self.events.append)
        self.optimizer = AdamW(self.model.parameters(), lr=1e-2)  # before any seed
        if bound:
            bind(self.optimizer, self.model)
        self.warned: list[warnings.WarningMessage] = []

    @property
    def slot(self) -> Any:
        return self.model.seed_slots[SLOT]

    def train(self, steps: int = 3) -> None:
        for _ in range(steps):
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(X), Y).backward()
            self.optimizer.step()

    def epoch(self, steps: int = 3) -> None:
        """Train, measure the seed's gradients as the user would, and step the lifecycle."""
        self.train(steps)
        ratio = None
        if self.slot.seed is not None:
            F.cross_entropy(self.model(X), Y).backward()
            ratio = self.slot.capture_gradient_telemetry().gradients.ratio
        with self.warnings():
            self.model.step_epoch({SLOT: SlotTelemetry(
                50.0, seed_gradient_norm_ratio=ratio, probe_loss_reduction=0.01)})

    @contextmanager
    def warnings(self) -> Iterator[None]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        self.warned += [w for w in caught if issubclass(w.category, UnboundSeedWarning)]

    def of(self, kind: EventType) -> list[Any]:
        return [e for e in self.events if e.type == kind]

    def g2(self) -> list[Any]:
        return [e.payload for e in self.of(EventType.SEED_GATE_EVALUATED)
                if e.payload["gate"] == "G2"]


def weights(model: MorphogeneticModel) -> list[Tensor]:
    return [p.detach().clone() for p in model.get_seed_parameters(SLOT)]


def germinate(loop: Loop, seed_id: str = "s1") -> list[Tensor]:
    """Germinate, then one epoch of the user's loop (G1: TRAINING); the seed's weights then."""
    loop.model.germinate_seed("lowrank", seed_id, slot=SLOT)
    loop.epoch()
    assert loop.slot.state.stage == SeedStage.TRAINING
    return weights(loop.model)


def test_a_seed_outside_the_users_optimizer_is_refused_once_loudly() -> None:
    loop = Loop(bound=False)
    before = germinate(loop)
    for _ in range(3):  # G2 is judged every epoch from the first TRAINING epoch on
        loop.epoch()
    assert loop.slot.state.stage == SeedStage.TRAINING
    assert all(torch.equal(a, b) for a, b in zip(before, weights(loop.model), strict=True))
    judged = loop.g2()
    assert len(judged) == 3 and not any(g["passed"] for g in judged)
    assert all(g["checks_failed"] == ["weights_frozen"] for g in judged)  # gradients: active
    assert "weights frozen" in judged[0]["message"]
    assert loop.slot.state.metrics.weights_moved is False

    frozen = loop.of(EventType.SEED_FROZEN)
    assert len(frozen) == 1 and len(loop.warned) == 1  # once per seed, not every epoch
    event = frozen[0]
    assert (event.slot_id, event.seed_id) == (SLOT, "s1")
    assert event.payload["params"] == sum(p.numel() for p in before)
    assert event.payload["hint"].endswith("esper.optim.bind(optimizer, model)")
    assert loop.events.index(event) < loop.events.index(loop.of(
        EventType.SEED_GATE_EVALUATED)[-3])  # before the refusal it explains
    message = str(loop.warned[0].message)
    assert "seed 's1' in slot '3' did not train" in message
    assert "esper.optim.bind(optimizer, model)" in message


def test_each_seed_is_reported_once() -> None:
    loop = Loop(bound=False)
    germinate(loop)
    loop.epoch()
    loop.model.prune_seed(slot=SLOT)
    while loop.slot.state.stage != SeedStage.DORMANT:
        loop.epoch()
    germinate(loop, "s2")
    loop.epoch()
    loop.epoch()
    assert [e.seed_id for e in loop.of(EventType.SEED_FROZEN)] == ["s1", "s2"]
    assert len(loop.warned) == 2


def test_a_bound_seed_trains_and_is_judged_on_its_other_checks() -> None:
    loop = Loop(bound=True)
    before = germinate(loop)
    loop.epoch()
    assert all(not torch.equal(a, b) for a, b in zip(before, weights(loop.model), strict=True))
    (judged,) = loop.g2()
    assert "weights_moved" in judged["checks_passed"] and judged["passed"]
    assert loop.slot.state.stage == SeedStage.BLENDING
    assert loop.of(EventType.SEED_FROZEN) == [] and loop.warned == []


# --------------------------------------------------------------------------- resume


def _save_and_load(loop: Loop, directory: Path, how: str) -> MorphogeneticModel:
    if how == "esper.save":
        esper.save(loop.model, directory)
        loaded = esper.load(mlp(), directory)
    else:
        state = loop.model.state_dict()
        loaded = esper.graft(mlp(), [SLOT], example_input=X, task_config=TASK)
        loaded.load_state_dict(state)
    assert loaded.slot_states() == loop.model.slot_states()  # the baseline came along
    return loaded


def _resumed(loop: Loop, directory: Path, how: str, *, bound: bool) -> Loop:
    """``loop`` saved mid-TRAINING (before G2) and loaded into a fresh loop; the resumed
    optimizer holds the host only, unless ``bound``."""
    resumed = Loop.__new__(Loop)
    resumed.events, resumed.warned = [], []
    resumed.model = _save_and_load(loop, directory, how)
    resumed.slot.on_telemetry = resumed.events.append
    resumed.optimizer = AdamW(resumed.model.get_host_parameters(), lr=1e-2)
    if bound:
        bind(resumed.optimizer, resumed.model)
    return resumed


@pytest.mark.parametrize("how", ["esper.save", "state_dict"])
def test_a_resumed_seed_is_compared_with_its_weights_as_training_began(tmp_path: Path,
                                                                       how: str) -> None:
    """Trained (moved), then saved before any measurement: after the resume it counts as
    moved without another step (a baseline re-taken at load would call it frozen)."""
    loop = Loop(bound=True)
    germinate(loop)
    loop.train()
    resumed = _resumed(loop, tmp_path, how, bound=True)
    with resumed.warnings():
        resumed.model.step_epoch({SLOT: SlotTelemetry(50.0, seed_gradient_norm_ratio=0.5,
                                                      probe_loss_reduction=0.01)})
    assert resumed.slot.state.metrics.weights_moved is True
    assert resumed.slot.state.stage == SeedStage.BLENDING and resumed.warned == []


@pytest.mark.parametrize("how", ["esper.save", "state_dict"])
def test_a_resumed_frozen_seed_is_still_refused(tmp_path: Path, how: str) -> None:
    loop = Loop(bound=False)
    before = germinate(loop)
    loop.train()
    resumed = _resumed(loop, tmp_path, how, bound=False)
    resumed.epoch()
    assert resumed.slot.state.stage == SeedStage.TRAINING
    assert resumed.g2()[0]["checks_failed"] == ["weights_frozen"]
    assert len(resumed.of(EventType.SEED_FROZEN)) == 1 and len(resumed.warned) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, weights(resumed.model), strict=True))


def test_bad_telemetry_is_refused_before_anything_is_measured() -> None:
    loop = Loop(bound=False)
    germinate(loop)
    loop.train()
    before = loop.slot.state
    for call in (lambda: loop.slot.step_epoch({"accuracy": 50.0}),
                 lambda: loop.slot.advance_stage(SeedStage.BLENDING, "50")):
        with pytest.raises(TypeError):
            call()
        assert loop.slot.state is before and loop.of(EventType.SEED_FROZEN) == []
