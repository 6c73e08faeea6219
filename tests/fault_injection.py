"""Fault injection for the crash tests: trace a process's file-system calls, die at one.

``trace(on_step)`` wraps the calls a checkpoint save makes (fsync, rename,
replace, mkdtemp, rmtree, unlink and safetensors' save_file) so that
``on_step(name, args)`` runs before each; ``kill_at(k)`` is an ``on_step``
that SIGKILLs the process before the k-th call (inside ``save_file`` it first
leaves half the file, as a crash in the middle of a write would).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch

TRACED: list[tuple[Any, str]] = [(os, "fsync"), (os, "rename"), (os, "replace"),
                                 (tempfile, "mkdtemp"), (shutil, "rmtree"), (os, "unlink"),
                                 (safetensors.torch, "save_file")]
Step = Callable[[str, tuple[Any, ...]], None]


def trace(on_step: Step) -> None:
    """Call ``on_step(name, args)`` before every traced file-system call, from now on."""
    for owner, name in TRACED:
        original = getattr(owner, name)

        def traced(*args: Any, __original=original, __name=name, **kwargs: Any) -> Any:
            on_step(__name, args)
            return __original(*args, **kwargs)

        setattr(owner, name, traced)


def kill_at(k: int) -> Step:
    """An ``on_step`` that SIGKILLs this process before the ``k``-th traced call."""
    seen = [0]

    def step(name: str, args: tuple[Any, ...]) -> None:
        seen[0] += 1
        if seen[0] == k:
            if name == "save_file":
                tensors, filename = args[0], args[1]
                whole = safetensors.torch.save(tensors)
                Path(filename).write_bytes(whole[: len(whole) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

    return step
