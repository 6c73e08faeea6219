"""Checkpoints: safetensors weights plus a versioned JSON document; loading never unpickles.

May import: ``esper.nn``, ``esper.optim`` and what they may.

Example:
    >>> path = save_checkpoint("runs/ckpt", model=model, optimizer=opt, trainer_state={"epoch": 3})
    >>> restored = load_checkpoint(path)
    >>> restored.model, restored.optimizer, restored.trainer_state["epoch"]
"""

from .api import load as load
from .api import save as save
from .errors import CheckpointError as CheckpointError
from .format import FORMAT as FORMAT
from .format import SCHEMA_VERSION as SCHEMA_VERSION
from .load import Checkpoint as Checkpoint
from .load import load_checkpoint as load_checkpoint
from .save import save_checkpoint as save_checkpoint

__all__ = ["FORMAT", "SCHEMA_VERSION", "Checkpoint", "CheckpointError", "load", "load_checkpoint",
           "save", "save_checkpoint"]
