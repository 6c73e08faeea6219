"""Issue 11, defect 8: every lifecycle event carries the trainer's epoch in which it happened.

A seed pruned at the epoch boundary (its breaker tripped) or during the epoch
(it raised) was stamped with its slot's own epoch counter, which only moves
when the slots step, after the prune: the event said the previous epoch.
"""

from __future__ import annotations

from pathlib import Path

from esper.data import load_task
from esper.kasmina import transition
from esper.leyline import EventType, SeedStage
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.trainer import Trainer
from tests.broken_modules import NaNSeed, RaisingSeed, registered


def trainer(tmp_path: Path, controller: ControllerConfig) -> tuple[Trainer, list[tuple[int, dict]]]:
    """A small trainer whose sink records (the trainer's epoch at emission, the event)."""
    config = GrowConfig(epochs=6, out=tmp_path, limit=160, compile=False, batch_size=16,
                        quiet=True, controller=controller, max_seeds=1, slots=("mid",))
    seen: list[tuple[int, dict]] = []
    t = Trainer(config, load_task("digits", limit=config.limit),
                sink=lambda record: seen.append((t.epoch, record)))
    return t, seen


def plant(t: Trainer, factory) -> None:
    """A seed of ``factory`` in ``mid``, in TRAINING, outside the controller."""
    with registered("bad", factory) as name:
        t.model.germinate_seed(name, "bad-1", slot="mid")
    slot = t.model.seed_slots["mid"]
    slot.state = transition(slot.state, SeedStage.TRAINING)
    t.optimizer = t.optimizer.synced(t.model)


def pruned(seen: list[tuple[int, dict]]) -> list[tuple[int, str]]:
    return [(e["epoch"], e["payload"]["reason"]) for _, e in seen
            if e.get("type") == EventType.SEED_PRUNED.value]


IDLE = ControllerConfig(warmup_epochs=100)


def test_a_seed_pruned_by_its_breaker_at_the_epoch_end_says_that_epoch(tmp_path):
    t, seen = trainer(tmp_path, IDLE)
    t.run_epoch()
    t.run_epoch()
    plant(t, lambda c: NaNSeed(c, every=5))
    t.run_epoch()  # epoch 3: the breaker trips, the seed is pruned at the epoch's end
    assert pruned(seen) == [(3, "non_finite")]


def test_a_seed_pruned_for_an_exception_during_the_epoch_says_that_epoch(tmp_path):
    t, seen = trainer(tmp_path, IDLE)
    plant(t, lambda c: RaisingSeed(c, after=3))
    t.run_epoch()
    assert pruned(seen) == [(1, "exception")]


def test_every_lifecycle_event_of_a_growing_run_carries_the_trainer_epoch(tmp_path):
    """A NaN seed pruned in epoch 1, then the heuristic's own seed once the slot is free."""
    t, seen = trainer(tmp_path, ControllerConfig(warmup_epochs=0, plateau_patience=1,
                                                 plateau_delta=100.0))
    plant(t, lambda c: NaNSeed(c, every=5))
    for _ in range(t.config.epochs):
        t.run_epoch()
    lifecycle = [(epoch, e) for epoch, e in seen if e["kind"] == "lifecycle"]
    types = [e["type"] for _, e in lifecycle]
    assert EventType.SEED_GERMINATED.value in types
    assert EventType.SEED_STAGE_CHANGED.value in types
    assert [(e["type"], e["epoch"]) for epoch, e in lifecycle if e["epoch"] != epoch] == []
    assert pruned(seen)[0] == (1, "non_finite")
