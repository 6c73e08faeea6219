"""``esper grow``'s own trainer always trains its seeds: G2's weights check never refuses them.

The check exists for users' own loops (``tests/nn/test_frozen_seed.py``); here a
growing run's seed is judged by G2 with its weights measured as moved, and no
``SEED_FROZEN`` event or ``UnboundSeedWarning`` is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from esper.data import load_task
from esper.errors import UnboundSeedWarning
from esper.leyline import EventType
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.trainer import Trainer


def test_a_growing_runs_seed_passes_g2_with_its_weights_moved(tmp_path: Path) -> None:
    config = GrowConfig(epochs=6, out=tmp_path, limit=160, compile=False, batch_size=16,
                        quiet=True, max_seeds=1, slots=("mid",),
                        controller=ControllerConfig(warmup_epochs=0, plateau_patience=1,
                                                    plateau_delta=100.0))
    seen: list[dict] = []
    trainer = Trainer(config, load_task("digits", limit=config.limit), sink=seen.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnboundSeedWarning)
        for _ in range(config.epochs):
            trainer.run_epoch()
    lifecycle = [e for e in seen if e.get("kind") == "lifecycle"]
    g2 = [e["payload"] for e in lifecycle if e["type"] == EventType.SEED_GATE_EVALUATED.value
          and e["payload"]["gate"] == "G2"]
    assert g2 and all("weights_moved" in g["checks_passed"] for g in g2)
    assert g2[-1]["passed"]
    assert not any(e["type"] == EventType.SEED_FROZEN.value for e in lifecycle)
    assert trainer.model.seed_slots["mid"].state.metrics.weights_moved is True
