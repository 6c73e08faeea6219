"""What one ``esper grow`` run is: its configuration and the host it grows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..data import TaskData
from ..errors import UnknownBlueprintError
from ..kasmina import blueprints
from ..kasmina.host import CNNHost, TransformerHost
from ..kasmina.safety import BreakerConfig
from ..leyline import QualityGates, TaskConfig
from ..leyline.constants import DEFAULT_TELEMETRY_STRIDE
from ..tamiyo import ControllerConfig

DEFAULT_BLUEPRINTS = {"cnn": ("norm", "conv_light", "attention", "depthwise"),
                      "transformer": ("lora", "mlp", "norm", "attention")}


@dataclass(frozen=True)
class GrowConfig:
    """Everything that determines a run (see ``esper grow --help``).

    ``commands`` switches the controller to an external one: signed lifecycle
    commands read from that JSON-lines file or FIFO at each epoch boundary
    (the key from ``ESPER_COMMAND_KEY``), instead of the heuristic policy.
    """

    task: str = "digits"
    epochs: int = 16
    slots: tuple[str, ...] = ("early", "mid", "late")
    max_seeds: int = 2
    blueprints: tuple[str, ...] | None = None
    seed: int = 0
    out: Path = Path("runs/grow")
    baseline: bool = False
    compile: bool = True
    compile_backend: str = "inductor"
    data_dir: Path | None = None
    batch_size: int = 64
    lr: float = 0.05
    limit: int | None = None
    quiet: bool = False
    telemetry_stride: int = DEFAULT_TELEMETRY_STRIDE
    width: int | None = None
    controller: ControllerConfig | None = None
    stop_after: int | None = None
    gates: QualityGates = field(default_factory=QualityGates)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    commands: Path | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "telemetry_stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.max_seeds, int) or self.max_seeds < 0:
            raise ValueError(f"max_seeds must be an int >= 0, got {self.max_seeds!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not str(self.out).strip():
            raise ValueError("out must name a run directory, got an empty path (which would be "
                             "the current directory)")
        if self.commands is not None and not isinstance(self.commands, Path):
            raise TypeError(f"commands must be a Path, got {self.commands!r}")

    def blueprints_for(self, topology: str) -> tuple[str, ...]:
        """The blueprints the controller may plant, checked against the registry."""
        chosen = self.blueprints or DEFAULT_BLUEPRINTS[topology]
        known = blueprints.names(topology)
        unknown = [b for b in chosen if b not in known]
        if unknown:
            raise UnknownBlueprintError(f"unknown {topology} blueprints {unknown}; known: "
                                        f"{list(known)}: choose among those (--blueprints)")
        return tuple(chosen)

    def controller_config(self, topology: str) -> ControllerConfig:
        """The controller's policy: ``controller`` with this run's blueprints and seed limit."""
        base = self.controller if self.controller is not None else ControllerConfig()
        return dataclasses.replace(base, blueprints=self.blueprints_for(topology),
                                   max_seeds=self.max_seeds)

    def task_config(self, topology: str) -> TaskConfig:
        """Lifecycle timing scaled to the run's length."""
        return TaskConfig(topology=topology, max_epochs=self.epochs,  # type: ignore[arg-type]
                          blending_steps=3, embargo_epochs=2)


def build_host(data: TaskData, width: int | None = None) -> nn.Module:
    """The host network for a task: a small CNN for images, a GPT for characters.

    ``width`` is the CNN's base channels or the transformer's embedding width.
    """
    if data.topology == "transformer":
        assert data.block_size is not None
        return TransformerHost(vocab_size=data.num_classes, n_embd=width or 64, n_head=4,
                               n_layer=3, block_size=data.block_size)
    size = data.input_shape[-1]
    return CNNHost(num_classes=data.num_classes, in_channels=data.in_channels or 3,
                   base_channels=width or (4 if size <= 16 else 32))
