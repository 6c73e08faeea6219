"""Leyline: the contracts every part of Esper speaks: stages, gates, configs, events, defaults.

May import: ``esper.errors`` and ``esper.validation`` only (plain data, no torch).
"""

from . import constants as constants
from .config import TOPOLOGIES as TOPOLOGIES
from .config import QualityGates as QualityGates
from .config import TaskConfig as TaskConfig
from .config import Topology as Topology
from .gates import GATE_FOR_TARGET as GATE_FOR_TARGET
from .gates import GateLevel as GateLevel
from .gates import GateResult as GateResult
from .stages import VALID_TRANSITIONS as VALID_TRANSITIONS
from .stages import SeedStage as SeedStage
from .stages import is_active as is_active
from .stages import is_blended as is_blended
from .stages import is_failure as is_failure
from .stages import is_live as is_live
from .stages import is_terminal as is_terminal
from .stages import is_valid_transition as is_valid_transition
from .telemetry import EVENT_PAYLOAD_FIELDS as EVENT_PAYLOAD_FIELDS
from .telemetry import EventType as EventType
from .telemetry import SlotTelemetry as SlotTelemetry
from .telemetry import TelemetryEvent as TelemetryEvent

__all__ = [
    "EVENT_PAYLOAD_FIELDS", "GATE_FOR_TARGET", "TOPOLOGIES", "VALID_TRANSITIONS", "EventType",
    "GateLevel", "GateResult", "QualityGates", "SeedStage", "SlotTelemetry", "TaskConfig",
    "TelemetryEvent", "Topology", "constants", "is_active", "is_blended", "is_failure",
    "is_live", "is_terminal", "is_valid_transition",
]
