"""One entry point that loads any task by name."""

from __future__ import annotations

from pathlib import Path

from ..leyline.constants import DEFAULT_RUN_TASK, RUN_TASKS
from .base import TaskData
from .chars import DEFAULT_BLOCK_SIZE, load_chars
from .cifar10 import load_cifar10
from .digits import load_digits
from .errors import DatasetError

TASKS = RUN_TASKS
DEFAULT_TASK = DEFAULT_RUN_TASK


def load_task(name: str = DEFAULT_TASK, *, data_dir: str | Path | None = None, seed: int = 0,
              limit: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE) -> TaskData:
    """Load a task by name.

    Arguments:
        name: one of :data:`TASKS`: ``"digits"`` (the default), ``"cifar10"`` or ``"chars"``.
        data_dir: ``cifar10``: the directory of batch files (required); ``chars``: a
            directory of ``.py`` files to read instead of the standard library; ``digits``:
            ignored.
        seed: seeds the ``digits`` train/val split; the other tasks have a fixed split.
        limit: if given, keep at most this many examples (sequences for ``chars``) per split.
        block_size: tokens per sequence of ``chars``; ignored by the image tasks.

    Returns:
        The task's :class:`TaskData`.

    Example:
        >>> task = load_task("digits", seed=0, limit=256)
        >>> task.train[0].shape
        torch.Size([256, 1, 16, 16])
    """
    if name == "digits":
        return load_digits(seed=seed, limit=limit)
    if name == "cifar10":
        return load_cifar10(data_dir, limit=limit)
    if name == "chars":
        return load_chars(block_size=block_size, limit=limit, source_dir=data_dir)
    raise DatasetError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
