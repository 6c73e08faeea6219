"""The ``nn.Module`` shell: the seed slot, the morphogenetic model, grafting, the hosts and
the blueprints.

May import: ``esper.ops`` and everything it may, and ``torch.nn``.
"""

from .graft import graft as graft
from .graft_points import GraftPoint as GraftPoint
from .model import ForwardOutput as ForwardOutput
from .model import MorphogeneticModel as MorphogeneticModel

__all__ = ["ForwardOutput", "GraftPoint", "MorphogeneticModel", "graft"]
