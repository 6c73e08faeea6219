"""A small, documented heuristic policy for growing a network.

The policy, applied once per epoch after the slots have stepped:

1. **Fossilize** a HOLDING seed once G5 would pass: it has spent
   ``min_holding_epochs`` epochs in HOLDING and the counterfactual
   contribution the lifecycle recorded there at full alpha
   (``metrics.holding_contribution``) reaches G5's threshold. A seed that
   entered HOLDING this epoch is never asked for (the gate itself is still
   checked when the decision is applied).
2. **Prune** a live seed whose counterfactual contribution is below
   ``prune_below`` points while it is blended in (BLENDING or HOLDING; one
   validation sample flipping is noise, not harm), or a TRAINING seed that has stalled:
   ``stall_epochs`` epochs past its training dwell without passing G2.
3. **Germinate** at most one seed per epoch when validation accuracy has
   plateaued (no gain of ``plateau_delta`` points over the best accuracy before
   the last ``plateau_patience`` epochs), after ``warmup_epochs``, in the first
   DORMANT slot (in the order given) that has germinated fewer than
   ``max_germinations_per_slot`` seeds, while fewer than ``max_seeds`` seeds
   are alive (germinated through fossilized). Blueprints are taken in turn
   from ``blueprints``; each seed blends in with ``blend_algorithm``'s alpha ramp.
   With ``candidates`` K >= 2 a germination plants a tournament of K seeds of
   the blueprint; the trainer keeps the best at the end of its TRAINING dwell.

Everything is pure: :meth:`HeuristicController.decide` takes the memory and
returns the decisions and the new memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..core.gates import g5_contribution
from ..core.state import SlotState
from ..core.tournament import check_candidates
from ..leyline import SeedStage, is_active
from ..leyline import constants as C
from ..leyline.constants import BLEND_ALGORITHMS, DEFAULT_BLEND_ALGORITHM
from ..validation import check_int
from .decisions import Decision


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Knobs of the heuristic policy (see the module docstring)."""

    blueprints: tuple[str, ...] = C.DEFAULT_RUN_BLUEPRINTS["cnn"]
    max_seeds: int = C.DEFAULT_CONTROLLER_MAX_SEEDS
    max_germinations_per_slot: int = C.DEFAULT_MAX_GERMINATIONS_PER_SLOT
    warmup_epochs: int = C.DEFAULT_WARMUP_EPOCHS
    plateau_patience: int = C.DEFAULT_PLATEAU_PATIENCE
    plateau_delta: float = C.DEFAULT_PLATEAU_DELTA
    stall_epochs: int = C.DEFAULT_STALL_EPOCHS
    prune_below: float = C.DEFAULT_PRUNE_BELOW
    blend_algorithm: str = DEFAULT_BLEND_ALGORITHM
    candidates: int = C.DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        check_candidates(self.candidates, "ControllerConfig.candidates")
        if self.blend_algorithm not in BLEND_ALGORITHMS:
            raise ValueError(f"ControllerConfig.blend_algorithm must be one of "
                             f"{BLEND_ALGORITHMS}, got {self.blend_algorithm!r}")
        if not self.blueprints or not all(isinstance(b, str) and b for b in self.blueprints):
            raise ValueError(f"blueprints must be a non-empty list of names, got "
                             f"{self.blueprints!r}")
        for name in ("max_seeds", "max_germinations_per_slot", "warmup_epochs",
                     "plateau_patience", "stall_epochs"):
            check_int(f"ControllerConfig.{name}", getattr(self, name), minimum=0)
        if self.plateau_patience < 1:
            raise ValueError("ControllerConfig.plateau_patience must be >= 1")


@dataclass(frozen=True, slots=True)
class ControllerMemory:
    """What the controller remembers between epochs."""

    accuracies: tuple[float, ...] = ()
    germinations: Mapping[str, int] = field(default_factory=dict)
    seeds_created: int = 0


def plateaued(accuracies: Sequence[float], patience: int, delta: float) -> bool:
    """Whether the last ``patience`` accuracies gained less than ``delta`` over the best before."""
    if len(accuracies) <= patience:
        return False
    before = max(accuracies[:-patience])
    return max(accuracies[-patience:]) < before + delta


@dataclass(frozen=True)
class HeuristicController:
    """The heuristic policy; construct with a :class:`ControllerConfig`."""

    config: ControllerConfig = field(default_factory=ControllerConfig)

    def decide(self, epoch: int, accuracy: float, states: Mapping[str, SlotState],
               memory: ControllerMemory) -> tuple[list[Decision], ControllerMemory]:
        """Decisions for this epoch and the controller's new memory.

        Arguments:
            epoch: the epoch just finished (1-based).
            accuracy: validation accuracy after it, in percent.
            states: every slot's state, in slot order.
            memory: what :meth:`decide` returned last time (``ControllerMemory()`` at first).
        """
        memory = replace(memory, accuracies=(*memory.accuracies, accuracy))
        decisions = [d for name, state in states.items()
                     if (d := self._tend(name, state)) is not None]
        planted = self._germinate(epoch, states, memory, decisions)
        if planted is not None:
            decisions.append(planted)
            counts = dict(memory.germinations)
            counts[planted.slot] = counts.get(planted.slot, 0) + 1
            memory = replace(memory, germinations=counts, seeds_created=memory.seeds_created + 1)
        return decisions, memory

    def _tend(self, name: str, state: SlotState) -> Decision | None:
        m, stage = state.metrics, state.stage
        contribution = m.counterfactual_contribution
        if stage == SeedStage.HOLDING and g5_contribution(state).passed:
            return Decision("fossilize", name, "g5_ready", seed_id=state.seed_id)
        if stage in (SeedStage.BLENDING, SeedStage.HOLDING) and contribution is not None \
                and contribution < self.config.prune_below:
            return Decision("prune", name, "negative_counterfactual", seed_id=state.seed_id)
        stalled = m.epochs_in_stage >= state.task.training_dwell + self.config.stall_epochs
        if stage == SeedStage.TRAINING and stalled:
            return Decision("prune", name, "stalled", seed_id=state.seed_id)
        return None

    def _germinate(self, epoch: int, states: Mapping[str, SlotState], memory: ControllerMemory,
                   decisions: list[Decision]) -> Decision | None:
        cfg = self.config
        leaving = {d.slot for d in decisions if d.action == "prune"}
        alive = sum(1 for n, s in states.items() if is_active(s.stage) and n not in leaving)
        if epoch < cfg.warmup_epochs or alive >= cfg.max_seeds:
            return None
        if not plateaued(memory.accuracies, cfg.plateau_patience, cfg.plateau_delta):
            return None
        for name, state in states.items():
            if state.stage == SeedStage.DORMANT \
                    and memory.germinations.get(name, 0) < cfg.max_germinations_per_slot:
                blueprint = cfg.blueprints[memory.seeds_created % len(cfg.blueprints)]
                seed_id = f"seed-{memory.seeds_created + 1}"
                return Decision("germinate", name, "plateau", blueprint, seed_id,
                                cfg.blend_algorithm, cfg.candidates)
        return None
