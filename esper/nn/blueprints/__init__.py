"""Blueprints: the catalog of seed modules a slot can germinate.

Importing this package registers the built-in CNN and transformer blueprints.
May import: ``esper.errors``, ``esper.leyline`` and torch.
"""

from . import cnn as cnn
from . import transformer as transformer
from .norm import group_norm as group_norm
from .probe import validate_seed as validate_seed
from .registry import BlueprintSpec as BlueprintSpec
from .registry import SeedFactory as SeedFactory
from .registry import create as create
from .registry import get as get
from .registry import names as names
from .registry import register as register
from .registry import unregister as unregister

__all__ = ["BlueprintSpec", "SeedFactory", "cnn", "create", "get", "group_norm", "names",
           "register", "transformer", "unregister", "validate_seed"]
