"""The functional optimizer whose state follows the model's topology (one group per slot),
and :func:`bind`, which keeps a user's own ``torch.optim`` optimizer in step with the seeds.

May import: ``esper.errors``, ``esper.validation``, ``esper.leyline`` and torch (``torch.nn`` too).
"""

from .bind import Binding as Binding
from .bind import UnboundSeedWarning as UnboundSeedWarning
from .bind import bind as bind
from .sgd import HOST_GROUP as HOST_GROUP
from .sgd import OptimizerState as OptimizerState
from .sgd import SGDConfig as SGDConfig
from .sgd import group_of as group_of
from .sgd import sgd_update as sgd_update

__all__ = ["HOST_GROUP", "Binding", "OptimizerState", "SGDConfig", "UnboundSeedWarning", "bind",
           "group_of", "sgd_update"]
