"""Esper: networks that grow while they train. The root holds the exceptions and the version.

May import: ``esper.errors`` and ``esper._version`` only, so ``import esper`` stays cheap.
"""

from . import errors
from ._version import __version__ as __version__
from .errors import AlphaShapeError as AlphaShapeError
from .errors import AlphaValueError as AlphaValueError
from .errors import CheckpointError as CheckpointError
from .errors import CommandSourceError as CommandSourceError
from .errors import DatasetError as DatasetError
from .errors import DistributedTimeoutError as DistributedTimeoutError
from .errors import EsperError as EsperError
from .errors import FossilizedSeedError as FossilizedSeedError
from .errors import InputDtypeError as InputDtypeError
from .errors import InputShapeError as InputShapeError
from .errors import InvalidTransitionError as InvalidTransitionError
from .errors import MalformedCommandError as MalformedCommandError
from .errors import NoLiveSeedError as NoLiveSeedError
from .errors import ResumeConflictError as ResumeConflictError
from .errors import RunDirectoryExistsError as RunDirectoryExistsError
from .errors import RunDirectoryLockedError as RunDirectoryLockedError
from .errors import RunLogError as RunLogError
from .errors import SeedRaisedError as SeedRaisedError
from .errors import SeedShapeError as SeedShapeError
from .errors import SlotOccupiedError as SlotOccupiedError
from .errors import StageError as StageError
from .errors import StateDictMismatchError as StateDictMismatchError
from .errors import TelemetryTypeError as TelemetryTypeError
from .errors import TelemetryValueError as TelemetryValueError
from .errors import TopologyMismatchError as TopologyMismatchError
from .errors import UnknownBlueprintError as UnknownBlueprintError
from .errors import UnknownSlotError as UnknownSlotError
from .errors import WeakCommandKeyError as WeakCommandKeyError

__all__ = [*errors.__all__, "__version__"]
