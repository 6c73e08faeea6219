"""Esper: networks that grow while they train. The root holds the exceptions, the version,
:func:`graft` (with :class:`GraftPoint`), :func:`save` and :func:`load`.

May import: ``esper.errors`` and ``esper._version`` eagerly; ``esper.nn`` and
``esper.checkpoint`` lazily (``graft``, ``GraftPoint``, ``save`` and ``load`` are loaded on
first use, by ``__getattr__``), so ``import esper`` stays cheap: it does not import torch.
"""

from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__ as __version__
from .errors import AlphaShapeError as AlphaShapeError
from .errors import AlphaValueError as AlphaValueError
from .errors import AlreadyGraftedError as AlreadyGraftedError
from .errors import CandidatesUnsupportedError as CandidatesUnsupportedError
from .errors import CheckpointError as CheckpointError
from .errors import CommandSourceError as CommandSourceError
from .errors import DatasetError as DatasetError
from .errors import DeviceUnavailableError as DeviceUnavailableError
from .errors import DistributedTimeoutError as DistributedTimeoutError
from .errors import EsperError as EsperError
from .errors import ExampleInputError as ExampleInputError
from .errors import FastModeBindError as FastModeBindError
from .errors import FossilizedSeedError as FossilizedSeedError
from .errors import GraftCallCountError as GraftCallCountError
from .errors import GraftMismatchError as GraftMismatchError
from .errors import GraftOutputError as GraftOutputError
from .errors import GraftPointError as GraftPointError
from .errors import GraftShapeError as GraftShapeError
from .errors import HostNotInOptimizerError as HostNotInOptimizerError
from .errors import InputDtypeError as InputDtypeError
from .errors import InputShapeError as InputShapeError
from .errors import InvalidTransitionError as InvalidTransitionError
from .errors import MalformedCommandError as MalformedCommandError
from .errors import NestedGraftPointError as NestedGraftPointError
from .errors import NoLiveSeedError as NoLiveSeedError
from .errors import PrecisionUnsupportedError as PrecisionUnsupportedError
from .errors import ResumeConflictError as ResumeConflictError
from .errors import RunDirectoryExistsError as RunDirectoryExistsError
from .errors import RunDirectoryLockedError as RunDirectoryLockedError
from .errors import RunLogError as RunLogError
from .errors import SeedRaisedError as SeedRaisedError
from .errors import SeedShapeError as SeedShapeError
from .errors import SharedParameterError as SharedParameterError
from .errors import SlotOccupiedError as SlotOccupiedError
from .errors import StageError as StageError
from .errors import StateDictMismatchError as StateDictMismatchError
from .errors import TelemetryTypeError as TelemetryTypeError
from .errors import TelemetryValueError as TelemetryValueError
from .errors import TopologyMismatchError as TopologyMismatchError
from .errors import UnboundSeedWarning as UnboundSeedWarning
from .errors import UnknownBlueprintError as UnknownBlueprintError
from .errors import UnknownGraftPointError as UnknownGraftPointError
from .errors import UnknownSlotError as UnknownSlotError
from .errors import WeakCommandKeyError as WeakCommandKeyError

if TYPE_CHECKING:
    from .checkpoint.api import load as load
    from .checkpoint.api import save as save
    from .nn.graft import graft as graft
    from .nn.graft_points import GraftPoint as GraftPoint



def __getattr__(name: str) -> Any:
    """``esper.graft``, ``esper.GraftPoint``, ``esper.save`` and ``esper.load``, imported on
    first use (so ``import esper`` stays cheap)."""
    if name == "graft":
        from .nn.graft import graft

        return graft
    if name == "GraftPoint":
        from .nn.graft_points import GraftPoint

        return GraftPoint
    if name in ("save", "load"):
        from .checkpoint import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*errors.__all__, "GraftPoint", "__version__", "graft", "load", "save"]
