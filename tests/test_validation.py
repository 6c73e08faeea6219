"""The shared argument checks of ``esper.validation``: one rule each, the caller's exception."""

from __future__ import annotations

import math

import pytest

from esper.errors import DatasetError
from esper.validation import check_finite, check_int, is_finite_real, is_int, is_real


@pytest.mark.parametrize("value, expected", [
    (0, True), (-3, True), (10**400, True),
    (True, False), (False, False), (1.0, False), ("1", False), (None, False),
])
def test_is_int_refuses_bools_and_floats(value: object, expected: bool) -> None:
    assert is_int(value) is expected


@pytest.mark.parametrize("value, expected", [
    (0, True), (0.5, True), (math.nan, True), (math.inf, True), (10**400, True),
    (True, False), ("0.5", False), (None, False), ([1.0], False),
])
def test_is_real_refuses_bools_and_non_numbers(value: object, expected: bool) -> None:
    assert is_real(value) is expected


@pytest.mark.parametrize("value, expected", [
    (0, True), (-1.5, True), (1e308, True),
    (math.nan, False), (math.inf, False), (-math.inf, False), (10**400, False), (True, False),
])
def test_is_finite_real_refuses_what_no_float_holds(value: object, expected: bool) -> None:
    assert is_finite_real(value) is expected


def test_check_int_returns_the_value_in_range() -> None:
    assert check_int("n", 0) == 0
    assert check_int("n", 5, minimum=1, maximum=5) == 5


@pytest.mark.parametrize("value", [0, -1, True, 1.0, "2", None])
def test_check_int_names_the_rule_and_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=rf"^epochs must be an int >= 1, got {value!r}$"):
        check_int("epochs", value, minimum=1)


def test_check_int_with_a_maximum_names_the_range() -> None:
    with pytest.raises(ValueError, match=r"^rank must be an int in \[0, 3\], got 4$"):
        check_int("rank", 4, maximum=3)


def test_check_int_raises_the_callers_exception() -> None:
    with pytest.raises(DatasetError, match="limit must be an int >= 1, got 0"):
        check_int("limit", 0, minimum=1, error=DatasetError)


def test_check_int_with_a_type_error_splits_type_from_range() -> None:
    with pytest.raises(TypeError, match=r"^steps must be an int, got True$"):
        check_int("steps", True, type_error=TypeError)
    with pytest.raises(ValueError, match=r"^steps must be an int >= 0, got -1$"):
        check_int("steps", -1, type_error=TypeError)


def test_check_finite_returns_a_float() -> None:
    value = check_finite("lr", 2)
    assert value == 2.0 and type(value) is float
    assert check_finite("lr", 0) == 0.0


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, 10**400, True, "1"])
def test_check_finite_refuses_what_is_not_a_finite_number_at_least_the_minimum(
        value: object) -> None:
    with pytest.raises(ValueError, match=rf"^lr must be a finite number >= 0, got {value!r}$"):
        check_finite("lr", value)


def test_check_finite_strict_refuses_the_minimum_itself() -> None:
    assert check_finite("freshness_s", 0.25, strict=True) == 0.25
    with pytest.raises(ValueError, match=r"^freshness_s must be a finite number > 0, got 0$"):
        check_finite("freshness_s", 0, strict=True)
    with pytest.raises(DatasetError, match=r"must be a finite number >= 1.5"):
        check_finite("x", 1, minimum=1.5, error=DatasetError)
