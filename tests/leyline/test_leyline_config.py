"""QualityGates and TaskConfig: defaults, derived timing, validation."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import pytest

from esper.leyline import TOPOLOGIES, QualityGates, TaskConfig, constants


def test_quality_gate_defaults_are_the_issue_values():
    g = QualityGates()
    assert g.probe_alpha == 0.1 and g.min_probe_loss_reduction == 0.0
    assert g.min_blending_epochs == 3
    assert g.min_seed_gradient_ratio == 0.05
    assert g.alpha_complete_threshold == 0.95
    assert g.min_fossilize_contribution == 1.0
    assert g.max_isolation_violations == 10
    assert g.min_holding_epochs == 1 == constants.DEFAULT_MIN_HOLDING_EPOCHS


def test_task_config_defaults_are_the_issue_values():
    t = TaskConfig()
    assert t.topology == "cnn"
    assert t.max_epochs == 25
    assert t.train_to_blend_fraction == 0.2
    assert t.blending_steps == 5
    assert t.embargo_epochs == 5
    assert TOPOLOGIES == ("cnn", "transformer", "mlp")


def test_constants_feed_the_defaults():
    assert constants.DEFAULT_MAX_HISTORY == 100
    assert constants.DEFAULT_HOLDING_TIMEOUT_FRACTION == 0.1
    assert constants.DEFAULT_MIN_HOLDING_TIMEOUT_EPOCHS == 5
    assert QualityGates().min_blending_epochs == constants.DEFAULT_MIN_BLENDING_EPOCHS
    assert TaskConfig().max_epochs == constants.DEFAULT_MAX_EPOCHS


@pytest.mark.parametrize("cls", [QualityGates, TaskConfig])
def test_configs_are_frozen(cls):
    obj = cls()
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, getattr(obj, field))


def test_configs_are_hashable_values():
    assert QualityGates() == QualityGates()
    assert hash(TaskConfig()) == hash(TaskConfig())
    assert TaskConfig(max_epochs=3) != TaskConfig()


def _exact_dwell(fraction: str, max_epochs: int) -> int:
    return max(1, math.ceil(Fraction(fraction) * max_epochs))


def _exact_timeout(max_epochs: int) -> int:
    return max(5, math.ceil(Fraction(1, 10) * max_epochs))


@pytest.mark.parametrize(("max_epochs", "dwell", "timeout"), [
    (1, 1, 5), (2, 1, 5), (4, 1, 5), (5, 1, 5), (6, 2, 5), (10, 2, 5), (25, 5, 5), (26, 6, 5),
    (49, 10, 5), (50, 10, 5), (51, 11, 6), (60, 12, 6), (61, 13, 7), (100, 20, 10),
    (101, 21, 11), (1000, 200, 100),
])
def test_derived_dwell_and_timeout_default_fraction(max_epochs, dwell, timeout):
    t = TaskConfig(max_epochs=max_epochs)
    assert t.training_dwell == dwell == _exact_dwell("0.2", max_epochs)
    assert t.holding_timeout == timeout == _exact_timeout(max_epochs)


@pytest.mark.parametrize("fraction", ["0", "0.01", "0.1", "0.25", "0.3", "0.5", "0.9", "1"])
@pytest.mark.parametrize("max_epochs", [1, 3, 7, 10, 30, 99, 250])
def test_derived_dwell_other_fractions(fraction, max_epochs):
    t = TaskConfig(max_epochs=max_epochs, train_to_blend_fraction=float(fraction))
    assert t.training_dwell == _exact_dwell(fraction, max_epochs)
    assert t.training_dwell >= 1
    assert t.holding_timeout == _exact_timeout(max_epochs)


def test_zero_fraction_still_dwells_one_epoch():
    assert TaskConfig(train_to_blend_fraction=0.0).training_dwell == 1


def test_integer_fraction_is_accepted():
    assert TaskConfig(max_epochs=7, train_to_blend_fraction=1).training_dwell == 7


@pytest.mark.parametrize(("fraction", "max_epochs"), [("0.28", 25), ("0.14", 50), ("0.55", 100),
                                                      ("0.07", 100)])
def test_derived_dwell_is_exact_for_decimal_fractions(fraction, max_epochs):
    t = TaskConfig(max_epochs=max_epochs, train_to_blend_fraction=float(fraction))
    assert t.training_dwell == _exact_dwell(fraction, max_epochs)


def test_isolate_while_blending_by_topology():
    assert TaskConfig(topology="cnn").isolate_while_blending is True
    assert TaskConfig(topology="transformer").isolate_while_blending is False


@pytest.mark.parametrize("kwargs", [
    {"min_probe_loss_reduction": math.nan}, {"min_probe_loss_reduction": math.inf},
    {"min_probe_loss_reduction": "0.5"}, {"min_probe_loss_reduction": None},
    {"min_probe_loss_reduction": True},
    {"probe_alpha": 0.0}, {"probe_alpha": 1.5}, {"probe_alpha": math.nan},
    {"min_seed_gradient_ratio": -math.inf}, {"min_seed_gradient_ratio": "x"},
    {"min_fossilize_contribution": math.nan}, {"min_fossilize_contribution": False},
    {"alpha_complete_threshold": 0.0}, {"alpha_complete_threshold": -0.1},
    {"alpha_complete_threshold": 1.01}, {"alpha_complete_threshold": math.nan},
    {"min_blending_epochs": -1}, {"min_blending_epochs": 3.0}, {"min_blending_epochs": True},
    {"min_blending_epochs": None},
    {"max_isolation_violations": -1}, {"max_isolation_violations": 1.5},
    {"max_isolation_violations": False},
    {"min_holding_epochs": 0}, {"min_holding_epochs": -1}, {"min_holding_epochs": 1.0},
    {"min_holding_epochs": True}, {"min_holding_epochs": None},
])
def test_quality_gates_validation(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"QualityGates.{name}"):
        QualityGates(**kwargs)


def test_quality_gates_accepts_edges():
    g = QualityGates(min_probe_loss_reduction=-1.0, probe_alpha=1.0, min_seed_gradient_ratio=0,
                     alpha_complete_threshold=1.0, min_fossilize_contribution=0.0,
                     min_blending_epochs=0, max_isolation_violations=0)
    assert g.alpha_complete_threshold == 1.0


@pytest.mark.parametrize("kwargs", [
    {"topology": "rnn"}, {"topology": "CNN"}, {"topology": None},
    {"max_epochs": 0}, {"max_epochs": -5}, {"max_epochs": 25.0}, {"max_epochs": True},
    {"blending_steps": 0}, {"blending_steps": 2.5}, {"blending_steps": True},
    {"embargo_epochs": -1}, {"embargo_epochs": 1.0}, {"embargo_epochs": False},
    {"embargo_epochs": None},
    {"train_to_blend_fraction": -0.01}, {"train_to_blend_fraction": 1.01},
    {"train_to_blend_fraction": math.nan}, {"train_to_blend_fraction": math.inf},
    {"train_to_blend_fraction": "0.2"}, {"train_to_blend_fraction": True},
])
def test_task_config_validation(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"TaskConfig.{name}"):
        TaskConfig(**kwargs)


def test_task_config_accepts_edges():
    t = TaskConfig(topology="transformer", max_epochs=1, blending_steps=1, embargo_epochs=0,
                   train_to_blend_fraction=1.0)
    assert (t.training_dwell, t.holding_timeout) == (1, 5)
