"""The one exception a checkpoint raises."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""


__all__ = ["CheckpointError"]
