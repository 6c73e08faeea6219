"""A small ``esper grow`` run that can SIGKILL itself inside a checkpoint save (crash tests).

Usage: ``python kill_grow.py OUT [SAVE K]``: runs :func:`config` ``(OUT)``;
with SAVE and K, during its SAVE-th checkpoint save the process is killed
before the K-th traced file-system call (see ``tests/fault_injection.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from esper.tamiyo import ControllerConfig
from esper.tolaria import run
from esper.tolaria.config import GrowConfig
from tests.fault_injection import kill_at, trace


def config(out: Path) -> GrowConfig:
    """Four eager epochs on 96 digits; the controller germinates at the end of epoch 2,
    so the run logs lifecycle events and trains a seed on both sides of its checkpoints."""
    return GrowConfig(epochs=4, limit=96, batch_size=16, compile=False, quiet=True, out=out,
                      max_seeds=1, controller=ControllerConfig(
                          warmup_epochs=0, plateau_patience=1, plateau_delta=100.0))


def main(out: Path, save: int = 0, k: int = 0) -> None:
    real, calls = run.save_checkpoint, [0]

    def save_checkpoint(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == save:
            trace(kill_at(k))
        return real(*args, **kwargs)

    run.save_checkpoint = save_checkpoint
    run.grow(config(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:]))
