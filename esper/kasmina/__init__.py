"""Kasmina: the slot state, the pure lifecycle and the compiled slot.

The pure core (state, lifecycle, gates, events, ops, telemetry, isolation)
works on immutable values; the shell (:class:`SeedSlot`,
:class:`MorphogeneticModel`) holds modules and swaps states.
"""

from . import blueprints as blueprints
from .blending import GatedBlend as GatedBlend
from .blending import create_blend as create_blend
from .events import events as events
from .host import CNNHost as CNNHost
from .host import TransformerHost as TransformerHost
from .isolation import IsolationReport as IsolationReport
from .isolation import isolation_probe as isolation_probe
from .isolation import measure_leak as measure_leak
from .lifecycle import advance as advance
from .lifecycle import cull as cull
from .lifecycle import fossilize as fossilize
from .lifecycle import germinate as germinate
from .lifecycle import prune as prune
from .lifecycle import set_alpha as set_alpha
from .lifecycle import step as step
from .lifecycle import transition as transition
from .model import MorphogeneticModel as MorphogeneticModel
from .ops import blend as blend
from .ops import isolate as isolate
from .ops import slot_forward as slot_forward
from .ops import ste as ste
from .protocol import HostProtocol as HostProtocol
from .schedule import alpha_at as alpha_at
from .serialize import state_from_dict as state_from_dict
from .serialize import state_to_dict as state_to_dict
from .slot import GradientReport as GradientReport
from .slot import SeedSlot as SeedSlot
from .slot import TelemetryCallbackWarning as TelemetryCallbackWarning
from .state import SeedMetrics as SeedMetrics
from .state import SlotState as SlotState
from .state import TransitionRecord as TransitionRecord
from .telemetry import GradientCapture as GradientCapture
from .telemetry import GradientEMA as GradientEMA
from .telemetry import GradientStats as GradientStats
from .telemetry import capture as capture
from .telemetry import materialize as materialize
from .telemetry import record as record

__all__ = [
    "CNNHost",
    "GatedBlend",
    "GradientCapture",
    "GradientEMA",
    "GradientReport",
    "GradientStats",
    "HostProtocol",
    "IsolationReport",
    "MorphogeneticModel",
    "SeedMetrics",
    "SeedSlot",
    "SlotState",
    "TelemetryCallbackWarning",
    "TransformerHost",
    "TransitionRecord",
    "advance",
    "alpha_at",
    "blend",
    "blueprints",
    "capture",
    "create_blend",
    "cull",
    "events",
    "fossilize",
    "germinate",
    "isolate",
    "isolation_probe",
    "materialize",
    "measure_leak",
    "prune",
    "record",
    "set_alpha",
    "slot_forward",
    "state_from_dict",
    "state_to_dict",
    "ste",
    "step",
    "transition",
]
