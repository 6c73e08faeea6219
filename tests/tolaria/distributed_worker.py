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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from esper.checkpoint import save_checkpoint
from esper.core import lifecycle
from esper.data import load_task
from esper.leyline import SeedStage
from esper.nn.slot import SeedSlot
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.consensus import Agreement, Proposal
from esper.tolaria.data_parallel import DataParallel
from esper.tolaria.distributed import session
from esper.tolaria.trainer import Trainer

EPOCHS = 9
CONFIG = GrowConfig(
    epochs=EPOCHS, limit=192, batch_size=32, compile=False, quiet=True, max_seeds=1,
    slots=("mid",), out=Path("unused"), blending_steps=3, embargo_epochs=2,
    controller=ControllerConfig(warmup_epochs=0, plateau_patience=1, plateau_delta=100.0))


@dataclass
class Dissent:
    """What rank 1 has done so far, and the slot it watches (set once the trainer is built)."""

    slot: SeedSlot | None = None
    withheld: bool = False
    pruned: bool = False


@dataclass(frozen=True)
class DissentingParallel(DataParallel):
    """Rank 1 withholds its first germination and proposes one prune nobody else does."""

    dissent: Dissent = field(default_factory=Dissent)

    def agree(self, proposal: Proposal, epoch: int) -> Agreement:
        return super().agree(self._dissenting(proposal), epoch)

    def _dissenting(self, proposal: Proposal) -> Proposal:
        dissent = self.dissent
        if self.rank != 1:
            return proposal
        if not dissent.withheld and any(d.action == "germinate" for d in proposal.decisions):
            dissent.withheld = True
            return replace(proposal, decisions=())
        assert dissent.slot is not None
        state = dissent.slot.state  # as the epoch started: the step is not applied yet
        if not dissent.pruned and state.stage == SeedStage.TRAINING:
            dissent.pruned = True
            return replace(proposal, states={**proposal.states,
                                             "mid": lifecycle.prune(state, "dissent")})
        return proposal


def main(dump: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a deadlock ends with its stacks
    events: list[dict[str, Any]] = []
    with session() as replicas:
        assert replicas is not None, "run under torchrun with 2 processes"
        data = load_task(CONFIG.task, seed=CONFIG.seed, limit=CONFIG.limit)
        parallel = DissentingParallel(replicas)
        trainer = Trainer(CONFIG, data, sink=events.append, parallel=parallel)
        parallel.dissent.slot = trainer.model.seed_slots["mid"]
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
