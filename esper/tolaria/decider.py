"""Who decides a run's germinations, fossilizations and prunes, and what it remembers.

Either the heuristic controller, which keeps a memory of the run (accuracies,
germinations per slot, seeds created), or signed external commands, read by
a :class:`~esper.tolaria.external.CommandSource` whose state (read offset,
replay memory) a checkpoint keeps so a resumed run refuses what it already
accepted. Only the main process reads the commands; the others receive
their decisions through the trainer's
:meth:`~esper.tolaria.parallelism.Parallelism.poll`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.state import SlotState
from ..errors import CheckpointError
from ..leyline import TelemetryEvent, Topology
from ..tamiyo import ControllerMemory, Decision, HeuristicController
from .commands import load_key_from_env
from .config import GrowConfig
from .external import CommandSource, open_source
from .parallelism import Parallelism


@dataclass
class Decider:
    """The controller or the command source of a run.

    Attributes:
        controller: the heuristic controller (it decides when ``external`` is false).
        external: whether signed commands decide instead.
        commands: the command source (the main process of an external run only).
        memory: the controller's memory of the run.
        command_state: the source's read offset and replay memory as of the
            last poll (checkpointed; ``None`` before the first).
    """

    controller: HeuristicController
    external: bool = False
    commands: CommandSource | None = None
    memory: ControllerMemory = field(default_factory=ControllerMemory)
    command_state: dict[str, Any] | None = None

    @classmethod
    def of(cls, config: GrowConfig, topology: Topology, slots: frozenset[str],
           on_event: Callable[[TelemetryEvent], None], reads_commands: bool) -> Decider:
        """The decider ``config`` asks for; with commands, every process checks the key and
        the path, and only one that ``reads_commands`` keeps the source open."""
        controller = HeuristicController(config.controller_config(topology))
        if config.commands is None:
            return cls(controller)
        commands = open_source(config.commands, load_key_from_env(), slots, on_event)
        if not reads_commands:  # a FIFO's lines would be split between readers
            commands.close()
            return cls(controller, external=True)
        return cls(controller, external=True, commands=commands)

    def propose(self, epoch: int, accuracy: float, states: Mapping[str, SlotState],
                parallel: Parallelism) -> tuple[list[Decision], ControllerMemory]:
        """The decisions for ``states`` (the slots after this epoch's step), and the
        controller memory that goes with them (see :meth:`settle`)."""
        if not self.external:
            return self.controller.decide(epoch, accuracy, dict(states), self.memory)
        decisions, self.command_state = parallel.poll(self.commands)
        return decisions, self.memory

    def settle(self, memory: ControllerMemory, applied: bool) -> None:
        """Keep ``memory`` if the proposed decisions were ``applied``; else only its
        accuracies (a refused germination is not counted)."""
        self.memory = memory if applied else replace(self.memory, accuracies=memory.accuracies)

    def memory_record(self) -> dict[str, Any]:
        """The controller's memory, JSON-ready (a checkpoint's ``"controller"``)."""
        return {"accuracies": list(self.memory.accuracies),
                "germinations": dict(self.memory.germinations),
                "seeds_created": self.memory.seeds_created}

    def restore(self, progress: Mapping[str, Any]) -> None:
        """Continue from a checked trainer state (its ``"controller"`` and ``"commands"``).

        Raises:
            CheckpointError: the command source refuses the saved state; nothing changed.
        """
        commands = progress.get("commands")  # absent from older checkpoints: nothing remembered
        if commands is not None and self.commands is not None:
            try:
                self.commands.restore(commands)  # checks before it changes anything
            except ValueError as error:
                raise CheckpointError(f"checkpoint trainer state 'commands': {error}") from None
        memory = progress["controller"]
        self.memory = ControllerMemory(tuple(memory["accuracies"]), dict(memory["germinations"]),
                                       int(memory["seeds_created"]))
        self.command_state = commands

    def close(self) -> None:
        """Release the command source, if any."""
        if self.commands is not None:
            self.commands.close()


__all__ = ["Decider"]
