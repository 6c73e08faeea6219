"""One rank of a 2-process test run (``torchrun ... distributed_worker.py DUMP_DIR``).

Grows a seed on the tiny digits task with a controller that germinates at
once, so it goes through TRAINING and BLENDING within a few epochs. Rank 1
disagrees on purpose twice: it withholds its first germination and, at the
first epoch that starts with its seed in TRAINING, proposes pruning it. Every
rank saves its final state to ``DUMP_DIR/rank-R`` (a checkpoint) and the
events it emitted to ``DUMP_DIR/rank-R/events.json`` for the test to compare.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from esper.checkpoint import save_checkpoint
from esper.core import lifecycle
from esper.data import load_task
from esper.leyline import SeedStage, SlotTelemetry
from esper.tamiyo import ControllerConfig, ControllerMemory
from esper.tolaria.config import GrowConfig
from esper.tolaria.consensus import Proposal
from esper.tolaria.data_parallel import DataParallelTrainer
from esper.tolaria.distributed import session

EPOCHS = 9
CONFIG = GrowConfig(
    epochs=EPOCHS, limit=192, batch_size=32, compile=False, quiet=True, max_seeds=1,
    slots=("mid",), out=Path("unused"), blending_steps=3, embargo_epochs=2,
    controller=ControllerConfig(warmup_epochs=0, plateau_patience=1, plateau_delta=100.0))


@dataclass
class DissentingTrainer(DataParallelTrainer):
    """Rank 1 withholds its first germination and proposes one prune nobody else does."""

    withheld: bool = False
    pruned: bool = False

    def _propose(self, val: float, telemetry: Mapping[str, SlotTelemetry]
                 ) -> tuple[Proposal, ControllerMemory]:
        proposal, memory = super()._propose(val, telemetry)
        if self.replicas.rank != 1:
            return proposal, memory
        if not self.withheld and any(d.action == "germinate" for d in proposal.decisions):
            self.withheld = True
            return replace(proposal, decisions=()), memory
        state = self.model.seed_slots["mid"].state
        if not self.pruned and state.stage == SeedStage.TRAINING:
            self.pruned = True
            states = {**proposal.states, "mid": lifecycle.prune(state, "dissent")}
            return replace(proposal, states=states), memory
        return proposal, memory


def main(dump: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a deadlock ends with its stacks
    events: list[dict[str, Any]] = []
    with session() as replicas:
        assert replicas is not None, "run under torchrun with 2 processes"
        data = load_task(CONFIG.task, seed=CONFIG.seed, limit=CONFIG.limit)
        trainer = DissentingTrainer(CONFIG, data, sink=events.append, replicas=replicas)
        stages = []
        while trainer.epoch < EPOCHS:
            trainer.run_epoch()
            stages.append(trainer.model.seed_slots["mid"].state.stage.name)
        out = save_checkpoint(dump / f"rank-{replicas.rank}", model=trainer.model,
                              optimizer=trainer.optimizer, trainer_state=trainer.trainer_state())
        (out / "events.json").write_text(json.dumps({"events": events, "stages": stages},
                                                    default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
