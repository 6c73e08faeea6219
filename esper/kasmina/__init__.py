"""Kasmina: the slot state, the pure lifecycle and the compiled slot."""

from .events import events as events
from .lifecycle import advance as advance
from .lifecycle import cull as cull
from .lifecycle import fossilize as fossilize
from .lifecycle import germinate as germinate
from .lifecycle import prune as prune
from .lifecycle import set_alpha as set_alpha
from .lifecycle import step as step
from .lifecycle import transition as transition
from .schedule import alpha_at as alpha_at
from .state import SeedMetrics as SeedMetrics
from .state import SlotState as SlotState
from .state import TransitionRecord as TransitionRecord

__all__ = [
    "SeedMetrics", "SlotState", "TransitionRecord", "advance", "alpha_at", "cull", "events",
    "fossilize", "germinate", "prune", "set_alpha", "step", "transition",
]
