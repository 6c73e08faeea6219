"""Tamiyo, the controller: decides when to germinate, fossilize and prune, from slot states.

May import: ``esper.core`` and what it may.
"""

from .decisions import ACTIONS as ACTIONS
from .decisions import Action as Action
from .decisions import Decision as Decision
from .heuristic import ControllerConfig as ControllerConfig
from .heuristic import ControllerMemory as ControllerMemory
from .heuristic import HeuristicController as HeuristicController
from .heuristic import plateaued as plateaued

__all__ = ["ACTIONS", "Action", "ControllerConfig", "ControllerMemory", "Decision",
           "HeuristicController", "plateaued"]
