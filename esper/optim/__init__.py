"""The training step's functional optimizers (SGD, AdamW) whose state follows the model's
topology (one group per slot), and :func:`bind`, which keeps a user's own ``torch.optim``
optimizer in step with the seeds.

May import: ``esper.errors``, ``esper.validation``, ``esper.leyline`` and torch (``torch.nn`` too).
"""

from .bind import Binding as Binding
from .bind import UnboundSeedWarning as UnboundSeedWarning
from .bind import bind as bind
from .config import HOST_GROUP as HOST_GROUP
from .config import AdamWConfig as AdamWConfig
from .config import OptimizerConfig as OptimizerConfig
from .config import SGDConfig as SGDConfig
from .config import optimizer_config as optimizer_config
from .schedule import RunSchedule as RunSchedule
from .schedule import lr_factor as lr_factor
from .state import OptimizerState as OptimizerState
from .state import decays as decays
from .state import group_of as group_of
from .update import masked_update as masked_update

__all__ = ["HOST_GROUP", "AdamWConfig", "Binding", "OptimizerConfig", "OptimizerState",
           "RunSchedule", "SGDConfig", "UnboundSeedWarning", "bind", "decays", "group_of",
           "lr_factor",
           "masked_update", "optimizer_config"]
