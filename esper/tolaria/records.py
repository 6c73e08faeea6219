"""What a run records: per-slot snapshots, per-epoch rows and the final summary.

Plain frozen data with JSON-ready ``to_dict`` views; the trainer builds them,
:mod:`esper.tolaria.report` writes them and :mod:`esper.tolaria.display` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..core.state import SlotState


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    """One slot at the end of one epoch.

    Attributes:
        slot: the slot's name (``"early"``, ``"mid"``...).
        stage: the :class:`~esper.leyline.SeedStage` name, e.g. ``"BLENDING"``.
        alpha: the blend weight of the seed, in [0, 1].
        seed_id: the seed it holds, ``None`` when empty.
        blueprint_id: the seed's blueprint, ``None`` when empty.
        counterfactual: the seed's contribution in accuracy points, when measured.
        gradient_ratio: the parameter-normalised seed/host gradient ratio, when measured.
        last_gate: a short text of the last gate result, e.g. ``"G2 failed: probe_loss_rose"``.
        candidates: the candidate seeds incubating in a tournament (1: one seed).
        winner: the candidate the seed was, when it won a tournament (``None``: it did not
            come from one).
    """

    slot: str
    stage: str
    alpha: float
    seed_id: str | None = None
    blueprint_id: str | None = None
    counterfactual: float | None = None
    gradient_ratio: float | None = None
    last_gate: str | None = None
    candidates: int = 1
    winner: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlotSnapshot:
        """The inverse of :meth:`to_dict`."""
        return cls(**data)

    @classmethod
    def of(cls, slot: str, state: SlotState, counterfactual: float | None) -> SlotSnapshot:
        """The snapshot of ``slot`` in ``state``, its ``counterfactual`` measured or not."""
        gate = state.last_gate
        return cls(slot=slot, stage=state.stage.name, alpha=state.alpha_value,
                   seed_id=state.seed_id, blueprint_id=state.blueprint_id,
                   counterfactual=counterfactual,
                   gradient_ratio=state.metrics.seed_gradient_norm_ratio,
                   last_gate=None if gate is None else gate.message,
                   candidates=state.candidates,
                   winner=None if state.selection is None else state.selection.winner)


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One epoch of a run.

    Attributes:
        epoch: the epoch number, from 1.
        train_loss: mean training loss over the epoch.
        val_accuracy: validation accuracy of the grown model, in percent.
        slots: a snapshot of every slot, in the model's slot order.
        seconds: wall time of the epoch.
        baseline_accuracy: validation accuracy of the host alone, when run with a baseline.
        val_loss: mean validation loss of the grown model (``None`` in records of runs
            logged before it was).
        lr: the host's learning rate at the epoch's last step (the schedule's value).
    """

    epoch: int
    train_loss: float
    val_accuracy: float
    slots: tuple[SlotSnapshot, ...]
    seconds: float
    baseline_accuracy: float | None = None
    val_loss: float | None = None
    lr: float | None = None

    def slot(self, name: str) -> SlotSnapshot | None:
        """The snapshot of slot ``name``, or ``None`` when this record lacks it."""
        return next((s for s in self.slots if s.slot == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "val_accuracy": self.val_accuracy, "baseline_accuracy": self.baseline_accuracy,
                "lr": self.lr, "seconds": self.seconds,
                "slots": [s.to_dict() for s in self.slots]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        """The inverse of :meth:`to_dict`."""
        slots = tuple(SlotSnapshot.from_dict(s) for s in data["slots"])
        return cls(int(data["epoch"]), data["train_loss"], data["val_accuracy"], slots,
                   data["seconds"], data.get("baseline_accuracy"), data.get("val_loss"),
                   data.get("lr"))


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The outcome of a whole run.

    Attributes:
        task: the task's name.
        epochs: epochs run.
        final_accuracy: validation accuracy at the end, in percent.
        baseline_accuracy: the host-alone accuracy at the end, when a baseline ran.
        seeds_germinated: seeds created over the run.
        seeds_fossilized: seeds made permanent.
        seeds_pruned: seeds removed (a tournament's candidates not counted).
        candidates_lost: tournament candidates pruned (lost the selection or went
            non-finite); the winner counts as the one seed germinated.
        parameters_host: parameters of the host.
        parameters_added: parameters of the seeds alive at the end, fossilized included.
        wall_seconds: wall time of the run.
        compile_count: training-step graphs compiled over the run.
        probe_compile_count: isolation-probe graphs compiled over the run.
        compile_seconds: wall time of the calls that compiled those graphs (tracing,
            compiling and that call's run), step and probe together.
        probe_compile_seconds: the probe's share of ``compile_seconds``.
        out_dir: where the run directory was written.
        contract_departures: each lifecycle setting that differs from the contract's
            default, ``{name: {"value": ..., "contract": ...}}`` (see
            :meth:`~esper.tolaria.config.GrowConfig.departures`); empty on the contract.
        training: how the steps ran: ``device`` (e.g. ``"cuda:0"``), ``precision``,
            ``optimizer``, ``schedule`` and ``step`` (``"compiled"`` or ``"eager"``).
        compile_choice: why the step ran compiled or eager (``--compile``'s mode and, for
            ``auto`` on a CPU, the eager seconds it projected; see
            :mod:`~esper.tolaria.compile_policy`).
    """

    task: str
    epochs: int
    final_accuracy: float
    baseline_accuracy: float | None
    seeds_germinated: int
    seeds_fossilized: int
    seeds_pruned: int
    parameters_host: int
    parameters_added: int
    wall_seconds: float
    compile_count: int
    probe_compile_count: int
    out_dir: str
    contract_departures: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)
    compile_choice: str = ""
    compile_seconds: float = 0.0
    probe_compile_seconds: float = 0.0
    candidates_lost: int = 0

    @property
    def parameters_added_percent(self) -> float:
        """``parameters_added`` as a percentage of the host (0 for an empty host)."""
        return 100.0 * self.parameters_added / self.parameters_host if self.parameters_host else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """The inverse of :meth:`to_dict`; extra keys (``esper_version``) are ignored, and
        fields with a default may be missing (summaries written before they existed)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)
                      if f.name in data or f.default_factory is MISSING})
