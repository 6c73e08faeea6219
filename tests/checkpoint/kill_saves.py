"""Kill a checkpoint save at every file-system step (run as a script by the crash tests).

Usage: ``python kill_saves.py OUT_DIR``. Saves checkpoint A (epoch 1) and B
(epoch 2) of two different models as references in ``OUT_DIR/ref-a`` and
``OUT_DIR/ref-b``; then, for k = 1, 2, ..., saves A twice into
``OUT_DIR/k<k>`` (epochs 0 and 1) and forks a child that saves B over it and SIGKILLs itself
at the k-th traced step (before the call; inside the weights write it first
writes half the file). Prints one JSON object: ``{"steps": [...], "killed": {k:
bool}}`` where ``steps`` names each traced call of an uninterrupted save.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # forked children must not touch an OpenMP pool

from esper.checkpoint import save_checkpoint  # noqa: E402
from esper.nn.host import CNNHost  # noqa: E402
from esper.nn.model import MorphogeneticModel  # noqa: E402
from tests.fault_injection import kill_at, trace  # noqa: E402


def model(seed: int) -> MorphogeneticModel:
    torch.manual_seed(seed)
    return MorphogeneticModel(CNNHost(base_channels=4), slots=("mid",))


def prepare(root: Path, a: MorphogeneticModel) -> None:
    """Two saves of A: the save of B then also removes the oldest version (keep 2)."""
    save_checkpoint(root, model=a, trainer_state={"epoch": 0})
    save_checkpoint(root, model=a, trainer_state={"epoch": 1})


def main(out: Path) -> None:
    a, b = model(1), model(2)
    save_checkpoint(out / "ref-a", model=a, trainer_state={"epoch": 1})
    save_checkpoint(out / "ref-b", model=b, trainer_state={"epoch": 2})
    steps: list[str] = []
    prepare(out / "count", a)
    pid = os.fork()
    if pid == 0:
        trace(lambda name, args: steps.append(name))
        save_checkpoint(out / "count", model=b, trainer_state={"epoch": 2})
        (out / "steps.json").write_text(json.dumps(steps))
        os._exit(0)
    os.waitpid(pid, 0)
    steps = json.loads((out / "steps.json").read_text())
    killed: dict[int, bool] = {}
    for k in range(1, len(steps) + 1):
        root = out / f"k{k}"
        prepare(root, a)
        pid = os.fork()
        if pid == 0:
            trace(kill_at(k))
            save_checkpoint(root, model=b, trainer_state={"epoch": 2})
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed[k] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"steps": steps, "killed": killed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
