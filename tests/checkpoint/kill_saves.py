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
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

torch.set_num_threads(1)  # forked children must not touch an OpenMP pool

from esper.checkpoint import save_checkpoint  # noqa: E402
from esper.kasmina.host import CNNHost  # noqa: E402
from esper.kasmina.model import MorphogeneticModel  # noqa: E402

TRACED: list[tuple[Any, str]] = [(os, "fsync"), (os, "rename"), (os, "replace"),
                                 (tempfile, "mkdtemp"), (shutil, "rmtree"), (os, "unlink"),
                                 (safetensors.torch, "save_file")]


def model(seed: int) -> MorphogeneticModel:
    torch.manual_seed(seed)
    return MorphogeneticModel(CNNHost(base_channels=4), slots=("mid",))


def trace(on_step: Callable[[str, tuple[Any, ...]], None]) -> None:
    """Call ``on_step(name, args)`` before every traced file-system call."""
    for owner, name in TRACED:
        original = getattr(owner, name)

        def traced(*args: Any, __original=original, __name=name, **kwargs: Any) -> Any:
            on_step(__name, args)
            return __original(*args, **kwargs)

        setattr(owner, name, traced)


def half_then_die(args: tuple[Any, ...]) -> None:
    """Inside the weights write: leave half a file, as a crash mid-write does."""
    tensors, filename = args[0], args[1]
    whole = safetensors.torch.save(tensors)
    Path(filename).write_bytes(whole[: len(whole) // 2])


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
            seen = [0]

            def step(name: str, args: tuple[Any, ...], k: int = k, seen: list[int] = seen
                     ) -> None:
                seen[0] += 1
                if seen[0] == k:
                    if name == "save_file":
                        half_then_die(args)
                    os.kill(os.getpid(), signal.SIGKILL)

            trace(step)
            save_checkpoint(root, model=b, trainer_state={"epoch": 2})
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed[k] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"steps": steps, "killed": killed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
