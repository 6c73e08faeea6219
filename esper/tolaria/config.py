"""What one ``esper grow`` run is: its configuration and the host it grows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..core.breaker import BreakerConfig
from ..core.tournament import check_candidates
from ..data import TaskData
from ..errors import UnknownBlueprintError
from ..leyline import QualityGates, TaskConfig
from ..leyline.constants import (
    BLEND_ALGORITHMS,
    COMPILE_MODES,
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_BLENDING_STEPS,
    DEFAULT_CANDIDATES,
    DEFAULT_COMPILE_BACKEND,
    DEFAULT_COMPILE_MODE,
    DEFAULT_DEVICE,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_OPTIMIZER,
    DEFAULT_PRECISION,
    DEFAULT_RUN_BATCH_SIZE,
    DEFAULT_RUN_BLUEPRINTS,
    DEFAULT_RUN_DIR,
    DEFAULT_RUN_EPOCHS,
    DEFAULT_RUN_MAX_SEEDS,
    DEFAULT_RUN_SEED,
    DEFAULT_RUN_SLOTS,
    DEFAULT_RUN_TASK,
    DEFAULT_SCHEDULE,
    DEFAULT_TELEMETRY_STRIDE,
    DEFAULT_WARMUP_STEPS,
    DEVICES,
    MAX_LEARNING_RATE,
    OPTIMIZERS,
    PRECISIONS,
    RUN_TRANSFORMER_HEADS,
    SCHEDULES,
)
from ..nn import blueprints
from ..nn.host import CNNHost, TransformerHost
from ..tamiyo import ControllerConfig
from ..validation import check_int, is_finite_real


@dataclass(frozen=True)
class GrowConfig:
    """Everything that determines a run (see ``esper grow --help``).

    ``commands`` switches the controller to an external one: signed lifecycle
    commands read from that JSON-lines file or FIFO at each epoch boundary
    (the key from ``ESPER_COMMAND_KEY``), instead of the heuristic policy.

    ``blending_steps`` and ``embargo_epochs`` default to the contract's
    (:class:`~esper.leyline.TaskConfig`); ``blend_algorithm`` is the alpha ramp
    of every seed germinated without one named (a signed command may name its
    own). :meth:`departures` lists what differs from the contract; the run's
    ``summary.json`` carries it.

    ``optimizer`` is the step's (``"sgd"`` or ``"adamw"``); ``lr`` defaults to
    that optimizer's rate, ``seed_lr`` (the seeds' groups) to ``lr``, and both
    follow ``schedule`` after ``warmup_steps``. ``precision`` is the forward's
    (``"fp32"``, ``"bf16"``, ``"fp16"``), ``device`` where the run trains
    (``"auto"``: CUDA when available); :mod:`~esper.tolaria.hardware` checks
    that the two go together when the run starts.

    ``compile`` is ``"auto"``, ``"always"`` or ``"never"`` (see
    :mod:`~esper.tolaria.compile_policy`); ``True`` and ``False`` are taken as
    ``"always"`` and ``"never"``, as runs recorded them before the modes.
    """

    task: str = DEFAULT_RUN_TASK
    epochs: int = DEFAULT_RUN_EPOCHS
    slots: tuple[str, ...] = DEFAULT_RUN_SLOTS
    max_seeds: int = DEFAULT_RUN_MAX_SEEDS
    blueprints: tuple[str, ...] | None = None
    seed: int = DEFAULT_RUN_SEED
    out: Path = Path(DEFAULT_RUN_DIR)
    baseline: bool = False
    compile: str = DEFAULT_COMPILE_MODE
    compile_backend: str = DEFAULT_COMPILE_BACKEND
    data_dir: Path | None = None
    batch_size: int = DEFAULT_RUN_BATCH_SIZE
    lr: float | None = None
    seed_lr: float | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    schedule: str = DEFAULT_SCHEDULE
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    precision: str = DEFAULT_PRECISION
    device: str = DEFAULT_DEVICE
    limit: int | None = None
    quiet: bool = False
    telemetry_stride: int = DEFAULT_TELEMETRY_STRIDE
    width: int | None = None
    controller: ControllerConfig | None = None
    stop_after: int | None = None
    gates: QualityGates = field(default_factory=QualityGates)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    commands: Path | None = None
    blending_steps: int = DEFAULT_BLENDING_STEPS
    embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS
    blend_algorithm: str = DEFAULT_BLEND_ALGORITHM
    candidates: int = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        check_candidates(self.candidates)
        if isinstance(self.compile, bool):
            object.__setattr__(self, "compile", "always" if self.compile else "never")
        for name in ("epochs", "batch_size", "telemetry_stride", "blending_steps"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("max_seeds", self.max_seeds, minimum=0)
        check_int("embargo_epochs", self.embargo_epochs, minimum=0)
        if self.blend_algorithm not in BLEND_ALGORITHMS:
            raise ValueError(f"blend_algorithm must be one of {BLEND_ALGORITHMS}, got "
                             f"{self.blend_algorithm!r}")
        for name in ("lr", "seed_lr"):
            value = getattr(self, name)
            if value is not None and not (is_finite_real(value)
                                          and 0 < value <= MAX_LEARNING_RATE):
                raise ValueError(f"{name} must be a number in (0, {MAX_LEARNING_RATE:g}], got "
                                 f"{value!r}")
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        for name, known in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                            ("precision", PRECISIONS), ("device", DEVICES),
                            ("compile", COMPILE_MODES)):
            if getattr(self, name) not in known:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; known: {list(known)}")
        if not str(self.out).strip():
            raise ValueError("out must name a run directory, got an empty path (which would be "
                             "the current directory)")
        if self.commands is not None and not isinstance(self.commands, Path):
            raise TypeError(f"commands must be a Path, got {self.commands!r}")

    def blueprints_for(self, topology: str) -> tuple[str, ...]:
        """The blueprints the controller may plant, checked against the registry."""
        chosen = self.blueprints or DEFAULT_RUN_BLUEPRINTS[topology]
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
                                   max_seeds=self.max_seeds,
                                   blend_algorithm=self.blend_algorithm,
                                   candidates=self.candidates)

    def task_config(self, topology: str) -> TaskConfig:
        """Lifecycle timing scaled to the run's length, with its blending and embargo."""
        return TaskConfig(topology=topology, max_epochs=self.epochs,  # type: ignore[arg-type]
                          blending_steps=self.blending_steps,
                          embargo_epochs=self.embargo_epochs)

    def departures(self) -> dict[str, dict[str, object]]:
        """Each setting of the lifecycle contract this run changes: ``{name: {"value": ...,
        "contract": ...}}`` (empty on the contract's defaults). Covers the task timing the
        CLI sets, the blend algorithm and every quality gate."""
        contract: dict[str, object] = {"blending_steps": DEFAULT_BLENDING_STEPS,
                                       "embargo_epochs": DEFAULT_EMBARGO_EPOCHS,
                                       "blend_algorithm": DEFAULT_BLEND_ALGORITHM}
        ours: dict[str, object] = {name: getattr(self, name) for name in contract}
        for gate in dataclasses.fields(QualityGates):
            contract[f"gates.{gate.name}"] = gate.default
            ours[f"gates.{gate.name}"] = getattr(self.gates, gate.name)
        return {name: {"value": ours[name], "contract": value}
                for name, value in contract.items() if ours[name] != value}


def build_host(data: TaskData, width: int | None = None) -> nn.Module:
    """The host network for a task: a small CNN for images, a GPT for characters.

    ``width`` is the CNN's base channels or the transformer's embedding width.
    """
    if data.topology == "transformer":
        assert data.block_size is not None
        return TransformerHost(vocab_size=data.num_classes, n_embd=width or 64,
                               n_head=RUN_TRANSFORMER_HEADS,
                               n_layer=3, block_size=data.block_size)
    size = data.input_shape[-1]
    return CNNHost(num_classes=data.num_classes, in_channels=data.in_channels or 3,
                   base_channels=width or (4 if size <= 16 else 32))
