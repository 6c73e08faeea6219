"""Immutable slot state: a frozen dataclass registered as a pytree.

Tensor leaves are only what the compiled slot forward reads: ``alpha`` (the
DESIGN.md coefficient ``a``), ``b`` (straight-through) and ``g`` (isolation).
Everything else is static metadata the graph never touches, so bookkeeping
never recompiles. States change only by building new ones
(:func:`dataclasses.replace` or the lifecycle functions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..leyline import GateResult, QualityGates, SeedStage, TaskConfig, is_active
from ..leyline.constants import (
    BLEND_ALGORITHMS,
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_MAX_HISTORY,
    MAX_CANDIDATES,
)
from ..validation import check_int
from .alpha import ALPHA_MODES, AlphaMode, check_alpha


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One entry of a slot's bounded transition history."""

    from_stage: SeedStage
    to_stage: SeedStage
    epoch: int
    reason: str
    seed_id: str | None = None
    epochs_in_stage: int = 0  # epochs spent in ``from_stage``
    detail: str | None = None  # what went wrong, for a prune forced by a fault


@dataclass(frozen=True, slots=True)
class SeedMetrics:
    """What the lifecycle remembers about the current seed (all static).

    Accuracies are validation accuracy in percent; ``None`` until observed.
    """

    epochs_total: int = 0
    epochs_in_stage: int = 0
    blend_step: int = 0
    accuracy_at_germination: float | None = None
    accuracy_at_stage_start: float | None = None
    accuracy_at_blending_start: float | None = None
    current_accuracy: float | None = None
    best_accuracy: float | None = None
    counterfactual_contribution: float | None = None
    seed_gradient_norm_ratio: float | None = None
    isolation_violations: int = 0
    probe_loss_reduction: float | None = None
    # The counterfactual contribution measured in HOLDING at full alpha (what G5 judges);
    # ``None`` until one is, and again whenever a stage is entered.
    holding_contribution: float | None = None
    # The seed's trainable weights as TRAINING began (:mod:`esper.core.movement`: a digest
    # the slot takes), and whether they have moved since (``None``: not measured); G2
    # refuses a seed whose weights did not move.
    training_fingerprint: str | None = None
    weights_moved: bool | None = None

    def replace(self, **changes: Any) -> SeedMetrics:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def entering_stage(self) -> SeedMetrics:
        """The metrics as a new stage begins: its clock and accuracy baseline restart."""
        return dataclasses.replace(self, epochs_in_stage=0,
                                   accuracy_at_stage_start=self.current_accuracy)

    @property
    def improvement(self) -> float:
        """Accuracy gained since the seed's first observed epoch."""
        return _delta(self.current_accuracy, self.accuracy_at_germination)

    @property
    def stage_improvement(self) -> float:
        """Accuracy gained since the current stage began."""
        return _delta(self.current_accuracy, self.accuracy_at_stage_start)

    @property
    def blending_delta(self) -> float:
        """Accuracy gained since blending began (conflates host drift; see counterfactual)."""
        return _delta(self.current_accuracy, self.accuracy_at_blending_start)


@dataclass(frozen=True, slots=True)
class Selection:
    """How a tournament ended: the candidate that won and every candidate's score.

    Attributes:
        winner: the winning candidate's index.
        scores: each candidate's score (its relative validation-loss reduction at
            the probe alpha; higher is better); ``None`` for a candidate dropped
            before the selection.
        epoch: the slot's epoch counter when it was selected.
        gradient_ratios: each candidate's gradient ratio (as G2 reads a seed's), when
            measured; empty when not.
    """

    winner: int
    scores: tuple[float | None, ...]
    epoch: int
    gradient_ratios: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.winner < len(self.scores):
            raise ValueError(f"Selection.winner {self.winner} is not one of the "
                             f"{len(self.scores)} candidates")


def _delta(now: float | None, then: float | None) -> float:
    return 0.0 if now is None or then is None else now - then


def stage_coefficients(stage: SeedStage, isolate: bool) -> tuple[float | None, float, float]:
    """The ``(a, b, g)`` a stage implies; ``a`` is ``None`` where the schedule sets it."""
    if stage in (SeedStage.GERMINATED, SeedStage.TRAINING):
        return 0.0, 1.0, 1.0
    if stage in (SeedStage.BLENDING, SeedStage.HOLDING):
        return None, 0.0, 1.0 if isolate else 0.0
    if stage == SeedStage.FOSSILIZED:
        return 1.0, 0.0, 0.0
    return 0.0, 0.0, 1.0


def _scalar(value: float, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32, device=device)


@dataclass(frozen=True, eq=False)
class SlotState:
    """The complete, immutable state of one injection slot.

    Build an empty slot with :meth:`dormant`; every later state comes from a
    lifecycle function. Invariants are checked at construction and raise
    ``ValueError`` (bad values) or ``TypeError`` (bad types).

    Example:
        >>> state = SlotState.dormant("mid", channels=64)
        >>> state.stage.name, float(state.alpha)
        ('DORMANT', 0.0)
    """

    slot_id: str
    channels: int
    alpha: torch.Tensor
    b: torch.Tensor
    g: torch.Tensor
    stage: SeedStage = SeedStage.DORMANT
    blueprint_id: str | None = None
    seed_id: str | None = None
    seed_params: int = 0
    blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM
    isolate: bool = True
    alpha_mode: AlphaMode = "scalar"
    task: TaskConfig = field(default_factory=TaskConfig)
    gates: QualityGates = field(default_factory=QualityGates)
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    epoch: int = 0
    history: tuple[TransitionRecord, ...] = ()
    transitions: int = 0
    last_gate: GateResult | None = None
    gate_evaluations: int = 0
    prune_reason: str | None = None
    alpha_overridden: bool = False
    # How many candidate seeds of ``blueprint_id`` incubate in a tournament (1: one seed).
    # More than 1 only in GERMINATED and TRAINING, before a winner is selected.
    candidates: int = 1
    dropped: tuple[int, ...] = ()  # candidates dropped (non-finite) before the selection
    selection: Selection | None = None  # how the seed's tournament ended, if it had one

    @classmethod
    def dormant(
        cls,
        slot_id: str,
        *,
        channels: int,
        task: TaskConfig | None = None,
        gates: QualityGates | None = None,
        alpha_mode: AlphaMode = "scalar",
        device: torch.device | str = "cpu",
        isolate: bool | None = None,
    ) -> SlotState:
        """An empty slot ready for germination.

        ``isolate`` is whether the seed's input stays detached from the host
        while it is blended in (BLENDING, HOLDING); ``None`` takes the task's
        default (:attr:`TaskConfig.isolate_while_blending`).
        """
        if isolate is not None and not isinstance(isolate, bool):
            raise TypeError(f"isolate must be a bool or None, got {isolate!r}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        check_int("channels", channels, minimum=1)
        shape = () if alpha_mode == "scalar" else (channels,)
        task = task if task is not None else TaskConfig()
        return cls(
            slot_id=slot_id, channels=channels,
            alpha=torch.zeros(shape, dtype=torch.float32, device=device),
            b=_scalar(0.0, device), g=_scalar(1.0, device),
            isolate=task.isolate_while_blending if isolate is None else isolate,
            alpha_mode=alpha_mode, task=task,
            gates=gates if gates is not None else QualityGates(),
        )

    def __post_init__(self) -> None:
        if not isinstance(self.slot_id, str):
            raise TypeError(f"slot_id must be a string, got {self.slot_id!r}")
        check_int("channels", self.channels, minimum=1, type_error=TypeError)
        if not self.slot_id:
            raise ValueError(f"slot_id must be a non-empty string, got {self.slot_id!r}")
        if not isinstance(self.stage, SeedStage):
            raise TypeError(f"stage must be a SeedStage, got {self.stage!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")
        if self.blend_algorithm_id not in BLEND_ALGORITHMS:
            raise ValueError(f"blend_algorithm_id must be one of {BLEND_ALGORITHMS}, "
                             f"got {self.blend_algorithm_id!r}")
        if len(self.history) > DEFAULT_MAX_HISTORY:
            raise ValueError(f"history holds at most {DEFAULT_MAX_HISTORY} records, "
                             f"got {len(self.history)}")
        seeded = is_active(self.stage) or self.stage == SeedStage.PRUNED
        if seeded and not (self.blueprint_id and self.seed_id):
            raise ValueError(f"a {self.stage.name} slot needs blueprint_id and seed_id")
        if self.stage == SeedStage.DORMANT and (self.blueprint_id or self.seed_id):
            raise ValueError("a DORMANT slot holds no seed: blueprint_id and seed_id must be None")
        check_int("candidates", self.candidates, minimum=1, maximum=MAX_CANDIDATES,
                  type_error=TypeError)  # tournament.check_candidates's rule (state comes first)
        if self.candidates > 1 and self.stage not in (SeedStage.GERMINATED, SeedStage.TRAINING):
            raise ValueError(f"a {self.stage.name} slot holds one seed, not a tournament of "
                             f"{self.candidates} candidates: they incubate in GERMINATED and "
                             "TRAINING only, until one is selected")
        if not all(isinstance(k, int) and k >= 0 for k in self.dropped):
            raise ValueError(f"dropped must hold candidate indices, got {self.dropped!r}")
        self._check_tensors()

    def _check_tensors(self) -> None:
        for name in ("alpha", "b", "g"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
                raise TypeError(f"SlotState.{name} must be a float32 tensor, got {value!r}")
            if name != "alpha" and value.dim() != 0:
                raise ValueError(f"SlotState.{name} must have shape (), got {tuple(value.shape)}")
        check_alpha(self.alpha, where=f"slot {self.slot_id!r}", channels=self.channels,
                    mode=None if self.alpha_overridden else self.alpha_mode)
        a, b, g = stage_coefficients(self.stage, self.isolate)
        a = None if self.alpha_overridden else a
        actual_b, actual_g = float(self.b), float(self.g)
        if (actual_b, actual_g) != (b, g) or (a is not None and not bool((self.alpha == a).all())):
            raise ValueError(
                f"coefficients of a {self.stage.name} slot must be (a={a}, b={b}, g={g}), "
                f"got (a={self.alpha.tolist()}, b={actual_b}, g={actual_g})")

    @property
    def alpha_value(self) -> float:
        """Mean alpha as a Python float (one host sync)."""
        return float(self.alpha.mean())

    @property
    def in_tournament(self) -> bool:
        """Whether candidate seeds incubate here (no winner selected yet)."""
        return self.candidates > 1

    @property
    def has_seed(self) -> bool:
        """Whether the forward runs a seed module in this stage."""
        return is_active(self.stage)

    def with_alpha(self, value: float | torch.Tensor) -> SlotState:
        """An evaluation copy whose alpha is ``value`` (see :func:`~esper.core.alpha.check_alpha`).

        For counterfactuals (``value=0`` removes the seed's contribution) and
        what-if evaluation: the same compiled graph runs it, nothing mutates.
        ``value`` is a number, a 0-d tensor, a vector of ``channels`` values,
        or a per-sample tensor ``[B, 1, ...]``, finite and in [0, 1]. The
        lifecycle functions refuse overridden states.

        Raises:
            AlphaValueError: a value outside [0, 1] or non-finite (a ``ValueError``).
            AlphaShapeError: a tensor of the wrong shape (a ``ValueError``).
            TypeError: neither a number nor a float tensor.
        """
        checked = check_alpha(value, where=f"slot {self.slot_id!r}", channels=self.channels)
        if isinstance(checked, torch.Tensor):
            alpha = checked.detach().to(dtype=torch.float32, device=self.alpha.device)
        else:
            alpha = torch.full(self.alpha.shape, checked, dtype=torch.float32,
                               device=self.alpha.device)
        return dataclasses.replace(self, alpha=alpha, alpha_overridden=True)

    def muted(self, flag: torch.Tensor) -> SlotState:
        """A step-input copy whose alpha is 0 where ``flag`` (0-d bool) is true.

        For a training step that must stop blending a misbehaving seed without
        a host sync: the select runs on the device and nothing is checked (the
        alpha is this state's own or 0). Not a lifecycle state: pass it to the
        step only, never commit it.
        """
        alpha = torch.where(flag, torch.zeros_like(self.alpha), self.alpha)
        return _unflatten([alpha, self.b, self.g], _flatten(self)[1])

    def replace(self, **changes: Any) -> SlotState:
        """A new state with ``changes`` applied and every invariant re-checked."""
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> SlotState:
        """The same state with its tensor leaves on ``device``."""
        return pytree.tree_map(lambda t: t.to(device), self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotState):
            return NotImplemented
        leaves, spec = pytree.tree_flatten(self)
        other_leaves, other_spec = pytree.tree_flatten(other)
        return spec == other_spec and all(
            x.shape == y.shape and x.device == y.device and torch.equal(x, y)
            for x, y in zip(leaves, other_leaves, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        alpha = self.alpha.tolist()
        alpha_text = f"{alpha:.3f}" if isinstance(alpha, float) else f"[{len(alpha)} channels]"
        seed = f", seed={self.seed_id!r} ({self.blueprint_id})" if self.seed_id else ""
        seed += f", {self.candidates} candidates" if self.in_tournament else ""
        return f"SlotState({self.slot_id!r}, {self.stage.name}, alpha={alpha_text}{seed})"


_LEAVES = ("alpha", "b", "g")
_STATIC = tuple(f.name for f in dataclasses.fields(SlotState) if f.name not in _LEAVES)


def _flatten(state: SlotState) -> tuple[list[torch.Tensor], tuple[Any, ...]]:
    return [getattr(state, n) for n in _LEAVES], tuple(getattr(state, n) for n in _STATIC)


def _flatten_with_keys(state: SlotState) -> tuple[list[tuple[Any, torch.Tensor]], tuple[Any, ...]]:
    leaves, context = _flatten(state)
    return [(pytree.GetAttrKey(n), leaf) for n, leaf in zip(_LEAVES, leaves, strict=True)], context


def _unflatten(leaves: Any, context: tuple[Any, ...]) -> SlotState:
    # Bypass __post_init__: unflattening happens under tracing (vmap, tree_map with
    # fake tensors) where value checks cannot run; the leaves came from a checked state.
    state = object.__new__(SlotState)
    for name, value in zip(_LEAVES, leaves, strict=True):
        object.__setattr__(state, name, value)
    for name, value in zip(_STATIC, context, strict=True):
        object.__setattr__(state, name, value)
    return state


pytree.register_pytree_node(
    SlotState, _flatten, _unflatten,
    serialized_type_name="esper.core.state.SlotState",
    flatten_with_keys_fn=_flatten_with_keys,
)
pytree.register_pytree_node(
    SeedMetrics, lambda m: ([], m), lambda _leaves, m: m,
    serialized_type_name="esper.core.state.SeedMetrics",
    flatten_with_keys_fn=lambda m: ([], m),
)

__all__ = ["ALPHA_MODES", "AlphaMode", "SeedMetrics", "Selection", "SlotState",
           "TransitionRecord",
           "stage_coefficients"]
