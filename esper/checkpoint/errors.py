"""The one exception a checkpoint raises (defined with the others in :mod:`esper.errors`)."""

from __future__ import annotations

from ..errors import CheckpointError

__all__ = ["CheckpointError"]
