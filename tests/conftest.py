"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from esper.kasmina import SlotState, fossilize, germinate, prune, step
from esper.leyline import QualityGates, SeedStage, SlotTelemetry, TaskConfig

_FAILURE_PATH = (SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING)


def _slot_at(
    stage: SeedStage,
    *,
    task: TaskConfig | None = None,
    gates: QualityGates | None = None,
    alpha_mode: str = "scalar",
    algo: str = "sigmoid",
    channels: int = 4,
) -> SlotState:
    """A slot that reached ``stage`` through the public lifecycle.

    The default task (``max_epochs=5``) has a one-epoch training dwell, a five-step
    blend, a five-epoch holding timeout and a five-epoch embargo. Accuracy rises one
    point an epoch and the seed gradient ratio is healthy, so G2 and G3 pass on time.
    HOLDING is reached with the sigmoid alpha at 0.976; a fossil steps through HOLDING
    until a counterfactual of 2 points is recorded at alpha 1.0, then passes G5.
    The failure stages are reached by pruning a freshly GERMINATED seed.
    """
    task = task if task is not None else TaskConfig(max_epochs=5)
    s = SlotState.dormant("mid", channels=channels, task=task, gates=gates, alpha_mode=alpha_mode)
    if stage == SeedStage.UNKNOWN:
        return s.replace(stage=SeedStage.UNKNOWN)
    if stage == SeedStage.DORMANT:
        return s
    s = germinate(s, "norm", "seed-1", blend_algorithm_id=algo, seed_params=1234)
    if stage in _FAILURE_PATH:
        s = prune(s, "test")
    accuracy = 50.0
    for _ in range(10_000):
        if s.stage == stage:
            return s
        if s.stage == SeedStage.HOLDING:  # validated in HOLDING at full alpha, then G5
            accuracy += 1.0
            s = step(s, SlotTelemetry(accuracy, counterfactual_contribution=2.0))
            if s.metrics.holding_contribution is not None:
                s, result = fossilize(s, SlotTelemetry(accuracy, counterfactual_contribution=2.0))
                assert result.passed, result
            continue
        accuracy += 1.0
        s = step(s, SlotTelemetry(accuracy, seed_gradient_norm_ratio=0.5,
                                  probe_loss_reduction=0.01))
    raise AssertionError(f"could not reach {stage.name}: stuck in {s.stage.name}")


@pytest.fixture
def slot_at() -> Callable[..., SlotState]:
    """Factory: ``slot_at(stage, task=..., gates=..., alpha_mode=..., algo=...)``."""
    return _slot_at


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Show stages by name in test ids (``HOLDING``, not ``5``)."""
    return val.name if isinstance(val, SeedStage) else None
