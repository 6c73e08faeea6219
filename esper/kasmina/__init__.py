"""Kasmina, the seed slot's public namespace: re-exports the core, the ops and the nn shell.

May import: ``esper.core``, ``esper.ops``, ``esper.nn``; nothing inside Esper imports it.
"""

from ..core.events import events as events
from ..core.lifecycle import advance as advance
from ..core.lifecycle import cull as cull
from ..core.lifecycle import fossilize as fossilize
from ..core.lifecycle import germinate as germinate
from ..core.lifecycle import prune as prune
from ..core.lifecycle import set_alpha as set_alpha
from ..core.lifecycle import step as step
from ..core.lifecycle import transition as transition
from ..core.schedule import alpha_at as alpha_at
from ..core.serialize import state_from_dict as state_from_dict
from ..core.serialize import state_to_dict as state_to_dict
from ..core.state import SeedMetrics as SeedMetrics
from ..core.state import SlotState as SlotState
from ..core.state import TransitionRecord as TransitionRecord
from ..nn import blueprints as blueprints
from ..nn.blending import GatedBlend as GatedBlend
from ..nn.blending import create_blend as create_blend
from ..nn.graft import graft as graft
from ..nn.graft_points import GraftPoint as GraftPoint
from ..nn.host import CNNHost as CNNHost
from ..nn.host import TransformerHost as TransformerHost
from ..nn.model import MorphogeneticModel as MorphogeneticModel
from ..nn.protocol import HostProtocol as HostProtocol
from ..nn.slot import SeedSlot as SeedSlot
from ..nn.slot import TelemetryCallbackWarning as TelemetryCallbackWarning
from ..ops.formula import blend as blend
from ..ops.formula import isolate as isolate
from ..ops.formula import slot_forward as slot_forward
from ..ops.formula import ste as ste
from ..ops.isolation import IsolationReport as IsolationReport
from ..ops.isolation import isolation_probe as isolation_probe
from ..ops.isolation import measure_leak as measure_leak
from ..ops.telemetry import GradientCapture as GradientCapture
from ..ops.telemetry import GradientEMA as GradientEMA
from ..ops.telemetry import GradientReport as GradientReport
from ..ops.telemetry import GradientStats as GradientStats
from ..ops.telemetry import capture as capture
from ..ops.telemetry import materialize as materialize
from ..ops.telemetry import record as record

__all__ = [
    "CNNHost",
    "GatedBlend",
    "GradientCapture",
    "GradientEMA",
    "GradientReport",
    "GradientStats",
    "GraftPoint",
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
    "graft",
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
