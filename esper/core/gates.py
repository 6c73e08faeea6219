"""Quality gates: pure checks of a state against its thresholds.

Each gate returns a :class:`~esper.leyline.GateResult` whose check tags are
machine-readable (``"dwell_met"`` / ``"dwell_short"`` and so on), so a
controller or a log reader can tell exactly why a seed did not advance.
"""

from __future__ import annotations

import torch

from ..leyline import GateLevel, GateResult, SeedStage, SlotTelemetry
from .state import SlotState


def _float32(value: float) -> float:
    """``value`` rounded as alpha is stored, so a threshold compares like with like."""
    return float(torch.tensor(value, dtype=torch.float32))


def _tagged(ok: bool, good: str, bad: str) -> tuple[str, bool]:
    return (good if ok else bad), ok


def g0_identity(blueprint_id: object, seed_id: object) -> GateResult:
    """G0: a germination names a blueprint and a seed."""
    checks = dict([
        _tagged(isinstance(blueprint_id, str) and bool(blueprint_id),
                "blueprint_id_present", "blueprint_id_missing"),
        _tagged(isinstance(seed_id, str) and bool(seed_id), "seed_id_present", "seed_id_missing"),
    ])
    return GateResult.from_checks(GateLevel.G0, SeedStage.GERMINATED, checks)


def g1_germinated(state: SlotState) -> GateResult:
    """G1: the seed finished germinating."""
    checks = dict([_tagged(state.stage == SeedStage.GERMINATED, "germinated", "not_germinated")])
    return GateResult.from_checks(GateLevel.G1, SeedStage.TRAINING, checks)


def _movement(moved: bool | None) -> tuple[str, bool]:
    """The weights check: a seed whose weights did not move since TRAINING began did not
    train (``None``, not measured, passes: a seed without parameters, an older state)."""
    if moved is None:
        return "weights_unmeasured", True
    return _tagged(moved, "weights_moved", "weights_frozen")


def _movement_detail(moved: bool | None) -> str:
    if moved is None:
        return "weights not measured"
    return ("weights moved" if moved
            else "weights frozen: none moved since TRAINING began, the seed did not train")


def g2_ready_to_blend(state: SlotState) -> GateResult:
    """G2: trained long enough, its weights moved, helps on its own evidence,
    gradient-active and isolated.

    The evidence is the seed's, not the host's: the validation loss with the
    seed blended in at ``gates.probe_alpha`` must fall by at least
    ``gates.min_probe_loss_reduction`` (relative) against the host alone at
    its slot. While a seed trains it is invisible (alpha 0), so the model's
    accuracy gain over TRAINING is the host's own progress and is not judged.
    Gradients alone do not show that the seed trained: ``metrics.weights_moved``
    (see :mod:`esper.core.movement`) must not be ``False``.
    """
    m, gates = state.metrics, state.gates
    ratio = m.seed_gradient_norm_ratio
    probe = m.probe_loss_reduction
    checks = dict([
        _tagged(state.stage == SeedStage.TRAINING, "in_training", "not_in_training"),
        _tagged(not state.in_tournament, "one_seed", "tournament_undecided"),
        _tagged(m.epochs_in_stage >= state.task.training_dwell, "dwell_met", "dwell_short"),
        _tagged(probe is not None and probe >= gates.min_probe_loss_reduction,
                "probe_helps", "probe_loss_rose" if probe is not None else "probe_unmeasured"),
        _tagged(ratio is not None and ratio >= gates.min_seed_gradient_ratio,
                "gradient_active", "gradient_low" if ratio is not None else "gradient_unmeasured"),
        _tagged(m.isolation_violations <= gates.max_isolation_violations,
                "isolation_ok", "isolation_violated"),
        _movement(m.weights_moved),
    ])
    detail = (f"probe loss reduction {'n/a' if probe is None else f'{probe:+.4f}'} at alpha "
              f"{gates.probe_alpha:g}, gradient ratio "
              f"{'n/a' if ratio is None else f'{ratio:.3f}'}, "
              f"{m.isolation_violations} isolation violations, "
              f"{_movement_detail(m.weights_moved)}")
    return GateResult.from_checks(GateLevel.G2, SeedStage.BLENDING, checks, detail)


def g3_blend_complete(state: SlotState) -> GateResult:
    """G3: alpha reached its target after enough blending epochs."""
    gates = state.gates
    alpha = float(state.alpha.min())
    checks = dict([
        _tagged(state.stage == SeedStage.BLENDING, "in_blending", "not_in_blending"),
        _tagged(alpha >= _float32(gates.alpha_complete_threshold), "alpha_reached", "alpha_low"),
        _tagged(state.metrics.epochs_in_stage >= gates.min_blending_epochs,
                "blend_epochs_met", "blend_epochs_short"),
    ])
    return GateResult.from_checks(GateLevel.G3, SeedStage.HOLDING, checks, f"alpha {alpha:.3f}")


def g5_contribution(state: SlotState, telemetry: SlotTelemetry | None = None) -> GateResult:
    """G5: the seed was validated in HOLDING and contributes enough.

    Judged on what :func:`~esper.core.lifecycle.step` recorded in HOLDING,
    not on a number handed to the request: at least ``min_holding_epochs``
    epochs in HOLDING, alpha at 1.0 everywhere, and a counterfactual
    contribution measured there at full alpha
    (``metrics.holding_contribution``) of at least
    ``min_fossilize_contribution`` points. ``telemetry``, the reading that
    comes with a fossilize request, must be finite when given.
    """
    m, gates = state.metrics, state.gates
    alpha = float(state.alpha.min())
    contribution = m.holding_contribution
    checks = dict([
        _tagged(state.stage == SeedStage.HOLDING, "in_holding", "not_in_holding"),
        _tagged(m.epochs_in_stage >= gates.min_holding_epochs,
                "holding_epochs_met", "holding_epochs_short"),
        _tagged(alpha >= 1.0, "alpha_full", "alpha_not_full"),
        _tagged(contribution is not None, "counterfactual_present", "counterfactual_missing"),
        _tagged(contribution is not None and contribution >= gates.min_fossilize_contribution,
                "contribution_met", "contribution_low"),
    ])
    if telemetry is not None:
        checks.update([_tagged(telemetry.is_finite, "telemetry_finite", "telemetry_non_finite")])
    detail = (f"{m.epochs_in_stage} epochs in HOLDING, {gates.min_holding_epochs} needed, "
              f"alpha {alpha:.3f}, " + ("no counterfactual measured in HOLDING at full alpha"
                                       if contribution is None
                                       else f"contribution {contribution:.2f} pts"))
    return GateResult.from_checks(GateLevel.G5, SeedStage.FOSSILIZED, checks, detail)
