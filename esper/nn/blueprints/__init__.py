"""Blueprints: the catalog of seed modules a slot can germinate.

Each blueprint declares the feature layouts it supports (``"cnn"``
``[B, C, H, W]``, ``"transformer"`` ``[B, T, C]``, ``"mlp"`` ``[B, C]``), and
the catalog is looked up per layout. Importing this package registers the
built-in CNN, transformer and MLP blueprints.
May import: ``esper.errors``, ``esper.leyline`` and torch.
"""

from . import cnn as cnn
from . import mlp as mlp
from . import transformer as transformer
from .norm import group_norm as group_norm
from .probe import LAYOUT_SHAPES as LAYOUT_SHAPES
from .probe import check_seed as check_seed
from .probe import default_probe as default_probe
from .probe import feature_probe as feature_probe
from .probe import fits_layout as fits_layout
from .probe import validate_seed as validate_seed
from .registry import BlueprintSpec as BlueprintSpec
from .registry import SeedFactory as SeedFactory
from .registry import build as build
from .registry import create as create
from .registry import get as get
from .registry import names as names
from .registry import register as register
from .registry import unregister as unregister

__all__ = ["LAYOUT_SHAPES", "BlueprintSpec", "SeedFactory", "build", "check_seed", "cnn",
           "create", "default_probe", "feature_probe", "fits_layout", "get", "group_norm", "mlp",
           "names", "register", "transformer", "unregister", "validate_seed"]
