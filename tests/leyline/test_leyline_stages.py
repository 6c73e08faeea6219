"""SeedStage, its aliases and parsing; the transition table and its helpers."""

from __future__ import annotations

from enum import IntEnum

import pytest

from esper.leyline import (
    VALID_TRANSITIONS,
    SeedStage,
    is_active,
    is_blended,
    is_failure,
    is_live,
    is_terminal,
    is_valid_transition,
)

S = SeedStage

CANONICAL = [
    ("UNKNOWN", 0), ("DORMANT", 1), ("GERMINATED", 2), ("TRAINING", 3), ("BLENDING", 4),
    ("HOLDING", 5), ("FOSSILIZED", 6), ("PRUNED", 7), ("EMBARGOED", 8), ("RESETTING", 9),
]

# The issue's table, written out independently of the source. HOLDING never goes back
# to BLENDING: neither revision of the specification has that edge, and no gate guards it.
EXPECTED_TRANSITIONS = {
    S.UNKNOWN: {S.DORMANT},
    S.DORMANT: {S.GERMINATED},
    S.GERMINATED: {S.TRAINING, S.PRUNED},
    S.TRAINING: {S.BLENDING, S.PRUNED},
    S.BLENDING: {S.HOLDING, S.PRUNED},
    S.HOLDING: {S.FOSSILIZED, S.PRUNED},
    S.FOSSILIZED: set(),
    S.PRUNED: {S.EMBARGOED},
    S.EMBARGOED: {S.RESETTING},
    S.RESETTING: {S.DORMANT},
}


def test_stage_is_int_enum_with_the_canonical_members_in_order():
    assert issubclass(SeedStage, IntEnum)
    assert [(s.name, s.value) for s in SeedStage] == CANONICAL


def test_aliases_are_the_same_members():
    assert S.PROBATIONARY is S.HOLDING
    assert S.CULLED is S.PRUNED
    assert S["PROBATIONARY"] is S.HOLDING
    assert S["CULLED"] is S.PRUNED
    assert len(list(SeedStage)) == 10  # aliases are not extra members


@pytest.mark.parametrize(("name", "value"), CANONICAL)
def test_parse_names_in_any_case_values_and_members(name, value):
    stage = S(value)
    assert S.parse(name) is stage
    assert S.parse(name.lower()) is stage
    assert S.parse(name.title()) is stage
    assert S.parse(value) is stage
    assert S.parse(stage) is stage


@pytest.mark.parametrize(("alias", "stage"), [
    ("PROBATIONARY", S.HOLDING), ("probationary", S.HOLDING),
    ("CULLED", S.PRUNED), ("culled", S.PRUNED), ("Culled", S.PRUNED),
])
def test_parse_aliases(alias, stage):
    assert S.parse(alias) is stage


@pytest.mark.parametrize("bad", ["", "bogus", "GERMINATE", " training", 10, -1, 99, True, False,
                                 None, 3.0, [], b"DORMANT"])
def test_parse_rejects_unknown_with_value_error(bad):
    with pytest.raises(ValueError, match="unknown seed stage"):
        S.parse(bad)


def test_parse_error_lists_known_stages():
    with pytest.raises(ValueError, match="DORMANT") as info:
        S.parse("nope")
    assert "'nope'" in str(info.value)


def test_transition_table_is_exactly_the_issue_table():
    assert set(VALID_TRANSITIONS) == set(SeedStage)
    assert {k: set(v) for k, v in VALID_TRANSITIONS.items()} == EXPECTED_TRANSITIONS
    for targets in VALID_TRANSITIONS.values():
        assert isinstance(targets, frozenset)


def test_transition_table_is_read_only():
    with pytest.raises(TypeError):
        VALID_TRANSITIONS[S.FOSSILIZED] = frozenset({S.PRUNED})  # type: ignore[index]
    with pytest.raises(AttributeError):
        VALID_TRANSITIONS[S.DORMANT].add(S.BLENDING)  # type: ignore[attr-defined]


@pytest.mark.parametrize("source", list(SeedStage))
@pytest.mark.parametrize("target", list(SeedStage))
def test_is_valid_transition_matches_table(source, target):
    assert is_valid_transition(source, target) == (target in EXPECTED_TRANSITIONS[source])


def test_holding_does_not_return_to_blending():
    assert not is_valid_transition(S.HOLDING, S.BLENDING)
    assert not is_valid_transition(S.PROBATIONARY, S.BLENDING)
    assert VALID_TRANSITIONS[S.HOLDING] == {S.FOSSILIZED, S.PRUNED}


def test_fossilized_can_never_be_left_and_no_stage_loops_to_itself():
    assert not any(is_valid_transition(S.FOSSILIZED, t) for t in SeedStage)
    assert not any(is_valid_transition(s, s) for s in SeedStage)


def test_every_stage_but_unknown_is_reachable_from_dormant():
    seen, frontier = {S.DORMANT}, [S.DORMANT]
    while frontier:
        for nxt in VALID_TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(SeedStage) - {S.UNKNOWN}


@pytest.mark.parametrize("stage", list(SeedStage))
def test_helpers(stage):
    assert is_terminal(stage) == (stage == S.FOSSILIZED)
    assert is_active(stage) == (stage in {S.GERMINATED, S.TRAINING, S.BLENDING, S.HOLDING,
                                          S.FOSSILIZED})
    assert is_failure(stage) == (stage in {S.PRUNED, S.EMBARGOED, S.RESETTING})
    assert not (is_active(stage) and is_failure(stage))


def test_helpers_accept_aliases():
    assert is_active(S.PROBATIONARY)
    assert is_failure(S.CULLED)
    assert is_valid_transition(S.PROBATIONARY, S.CULLED)


def test_the_stage_predicates_are_one_family():
    """Live (on trial) < active (a seed module: live or fossil); blended: in the output."""
    live = {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING}
    stages = set(SeedStage)
    assert {s for s in stages if is_live(s)} == live
    assert {s for s in stages if is_active(s)} == live | {SeedStage.FOSSILIZED}
    assert {s for s in stages if is_blended(s)} == {SeedStage.BLENDING, SeedStage.HOLDING,
                                                    SeedStage.FOSSILIZED}
