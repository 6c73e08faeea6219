"""alpha_at: the blend ramps."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.kasmina import alpha_at
from esper.leyline.constants import BLEND_ALGORITHMS, DEFAULT_SIGMOID_STEEPNESS

ALGOS = list(BLEND_ALGORITHMS)


def _sigmoid_ref(step: int, steps: int) -> float:
    k = DEFAULT_SIGMOID_STEEPNESS
    s = lambda x: 1.0 / (1.0 + math.exp(-x))
    return (s(k * (step / steps - 0.5)) - s(-k / 2)) / (s(k / 2) - s(-k / 2))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 37])
def test_zero_at_start_exactly_one_at_end_and_after(algo, steps):
    assert alpha_at(algo, 0, steps) == 0.0
    assert alpha_at(algo, -3, steps) == 0.0
    assert alpha_at(algo, steps, steps) == 1.0
    assert alpha_at(algo, steps + 1, steps) == 1.0
    assert alpha_at(algo, 10 * steps, steps) == 1.0
    assert type(alpha_at(algo, steps, steps)) is float


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("steps", [1, 2, 4, 5, 9, 50])
def test_monotone_and_clamped(algo, steps):
    values = [alpha_at(algo, k, steps) for k in range(-2, steps + 3)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in itertools.pairwise(values))
    inner = [alpha_at(algo, k, steps) for k in range(steps + 1)]
    assert all(a < b for a, b in itertools.pairwise(inner))  # strictly inside


@pytest.mark.parametrize("steps", [1, 3, 5, 8])
def test_linear_values(steps):
    for k in range(steps + 1):
        assert alpha_at("linear", k, steps) == pytest.approx(k / steps, abs=1e-15)


@pytest.mark.parametrize("steps", [2, 3, 5, 8, 20])
def test_sigmoid_values(steps):
    for k in range(1, steps):
        assert alpha_at("sigmoid", k, steps) == pytest.approx(_sigmoid_ref(k, steps), abs=1e-12)


def test_sigmoid_known_points():
    assert alpha_at("sigmoid", 1, 2) == pytest.approx(0.5, abs=1e-12)
    assert alpha_at("sigmoid", 5, 10) == pytest.approx(0.5, abs=1e-12)
    assert alpha_at("sigmoid", 4, 5) == pytest.approx(0.97577, abs=1e-4)
    assert alpha_at("sigmoid", 1, 5) == pytest.approx(1 - alpha_at("sigmoid", 4, 5), abs=1e-12)
    # slower than linear early, faster late
    assert alpha_at("sigmoid", 1, 5) < alpha_at("linear", 1, 5)
    assert alpha_at("sigmoid", 4, 5) > alpha_at("linear", 4, 5)


@pytest.mark.parametrize("steps", [1, 2, 5, 11])
def test_gated_follows_sigmoid(steps):
    for k in range(-1, steps + 2):
        assert alpha_at("gated", k, steps) == alpha_at("sigmoid", k, steps)


def test_errors():
    with pytest.raises(ValueError, match="unknown blend algorithm"):
        alpha_at("cosine", 1, 5)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        alpha_at("linear", 0, 0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        alpha_at("sigmoid", 1, -2)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALGOS), st.integers(1, 500), st.integers(-10, 600), st.integers(-10, 600))
def test_property_monotone_clamped(algo, steps, i, j):
    lo, hi = sorted((i, j))
    a, b = alpha_at(algo, lo, steps), alpha_at(algo, hi, steps)
    assert 0.0 <= a <= b <= 1.0
    assert (alpha_at(algo, hi, steps) == 1.0) == (hi >= steps)
