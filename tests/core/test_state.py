"""SlotState: construction, invariants, immutability, pytree behaviour, equality, devices."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.utils._pytree as pytree

from esper.core.serialize import state_from_dict, state_to_dict
from esper.core.state import stage_coefficients
from esper.kasmina import SeedMetrics, SlotState, TransitionRecord, germinate, transition
from esper.leyline import GateLevel, GateResult, QualityGates, SeedStage, TaskConfig

S = SeedStage


def dormant(**kw) -> SlotState:
    kw.setdefault("channels", 4)
    return SlotState.dormant("mid", **kw)


def blending(**kw) -> SlotState:
    s = germinate(dormant(**kw), "norm", "seed-1")
    return transition(transition(s, S.TRAINING), S.BLENDING)


# --------------------------------------------------------------------------- dormant()


def test_dormant_defaults():
    s = dormant()
    assert s.stage is S.DORMANT
    assert s.slot_id == "mid" and s.channels == 4
    assert s.blueprint_id is None and s.seed_id is None and s.seed_params == 0
    assert s.alpha.shape == () and s.alpha.dtype == torch.float32 and float(s.alpha) == 0.0
    assert (float(s.b), float(s.g)) == (0.0, 1.0)
    assert not hasattr(s, "a")  # one name for the blend weight: alpha
    assert s.alpha_value == 0.0
    assert not s.has_seed
    assert s.history == () and s.transitions == 0 and s.epoch == 0
    assert s.last_gate is None and s.gate_evaluations == 0 and s.prune_reason is None
    assert s.task == TaskConfig() and s.gates == QualityGates()
    assert s.metrics == SeedMetrics()
    assert s.alpha_mode == "scalar" and s.isolate is True
    assert s.blend_algorithm_id == "sigmoid"


def test_dormant_channel_mode_and_custom_config():
    task = TaskConfig(topology="transformer", max_epochs=7)
    gates = QualityGates(min_blending_epochs=1)
    s = SlotState.dormant("late", channels=8, task=task, gates=gates, alpha_mode="channel")
    assert s.alpha.shape == (8,) and torch.equal(s.alpha, torch.zeros(8))
    assert s.task is task and s.gates is gates
    assert s.isolate is False  # transformer co-adapts while blending


@pytest.mark.parametrize("kwargs", [
    {"channels": 0}, {"channels": -1}, {"channels": 2.0}, {"channels": True},
    {"channels": 4, "alpha_mode": "sample"},
])
def test_dormant_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SlotState.dormant("mid", **kwargs)


def test_repr_is_short():
    assert repr(dormant()) == "SlotState('mid', DORMANT, alpha=0.000)"
    assert "4 channels" in repr(dormant(alpha_mode="channel"))
    assert "seed='seed-1' (norm)" in repr(blending())


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("slot_id", ["", None, 3])
def test_slot_id_must_be_non_empty_string(slot_id):
    with pytest.raises((ValueError, TypeError), match="slot_id"):
        dormant().replace(slot_id=slot_id)


@pytest.mark.parametrize("channels", [0, -3, 1.5, None, True])
def test_channels_must_be_positive_int(channels):
    with pytest.raises((ValueError, TypeError), match="channels"):
        dormant().replace(channels=channels)


def test_stage_must_be_seed_stage():
    with pytest.raises(TypeError, match="stage"):
        dormant().replace(stage=1)


def test_alpha_mode_and_blend_algorithm_validated():
    with pytest.raises(ValueError, match="alpha_mode"):
        dormant().replace(alpha_mode="vector")
    with pytest.raises(ValueError, match="blend_algorithm_id"):
        dormant().replace(blend_algorithm_id="cubic")


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan"), float("inf")])
def test_alpha_range(value):
    with pytest.raises(ValueError, match=r"alpha must"):
        blending().replace(alpha=torch.tensor(value))


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_alpha_in_range_accepted_while_blending(value):
    assert float(blending().replace(alpha=torch.tensor(value)).alpha) == pytest.approx(value)


@pytest.mark.parametrize(("name", "value"), [
    ("alpha", 0.0), ("alpha", torch.tensor(0.0, dtype=torch.float64)),
    ("alpha", torch.tensor(0, dtype=torch.int32)), ("b", 0.0), ("g", torch.tensor(True)),
    ("g", torch.tensor(1.0, dtype=torch.float16)),
])
def test_leaves_must_be_float32_tensors(name, value):
    with pytest.raises(TypeError, match=f"SlotState.{name}"):
        dormant().replace(**{name: value})


@pytest.mark.parametrize(("mode", "name", "shape"), [
    ("scalar", "alpha", (1,)), ("scalar", "alpha", (4,)), ("channel", "alpha", ()),
    ("channel", "alpha", (3,)), ("channel", "alpha", (4, 1)), ("scalar", "b", (1,)),
    ("channel", "g", (4,)),
])
def test_leaf_shapes(mode, name, shape):
    s = dormant(alpha_mode=mode)
    fill = 1.0 if name == "g" else 0.0
    with pytest.raises(ValueError, match="shape"):
        s.replace(**{name: torch.full(shape, fill)})


@pytest.mark.parametrize(("stage", "expected"), [
    (S.UNKNOWN, (0.0, 0.0, 1.0)), (S.DORMANT, (0.0, 0.0, 1.0)),
    (S.GERMINATED, (0.0, 1.0, 1.0)), (S.TRAINING, (0.0, 1.0, 1.0)),
    (S.BLENDING, (None, 0.0, 1.0)), (S.HOLDING, (None, 0.0, 1.0)),
    (S.FOSSILIZED, (1.0, 0.0, 0.0)), (S.PRUNED, (0.0, 0.0, 1.0)),
    (S.EMBARGOED, (0.0, 0.0, 1.0)), (S.RESETTING, (0.0, 0.0, 1.0)),
])
def test_stage_coefficients_table(stage, expected):
    assert stage_coefficients(stage, isolate=True) == expected
    a, b, g = expected
    if stage in (S.BLENDING, S.HOLDING):
        g = 0.0
    assert stage_coefficients(stage, isolate=False) == (a, b, g)


@pytest.mark.parametrize(("changes", "where"), [
    ({"b": torch.tensor(1.0)}, "DORMANT"),
    ({"g": torch.tensor(0.0)}, "DORMANT"),
])
def test_coefficients_must_match_stage_dormant(changes, where):
    with pytest.raises(ValueError, match=f"coefficients of a {where}"):
        dormant().replace(**changes)


def test_coefficients_must_match_stage_seeded():
    s = germinate(dormant(), "norm", "seed-1")
    with pytest.raises(ValueError, match="coefficients of a GERMINATED"):
        s.replace(alpha=torch.tensor(0.5))
    with pytest.raises(ValueError, match="coefficients of a GERMINATED"):
        s.replace(b=torch.tensor(0.0))
    b = blending()
    with pytest.raises(ValueError, match="coefficients of a BLENDING"):
        b.replace(b=torch.tensor(1.0))
    with pytest.raises(ValueError, match="coefficients of a BLENDING"):
        b.replace(g=torch.tensor(0.0))  # cnn isolates while blending
    with pytest.raises(ValueError, match="coefficients of a TRAINING"):
        b.replace(stage=S.TRAINING, alpha=torch.tensor(0.5))


def test_history_bound():
    record = TransitionRecord(S.DORMANT, S.GERMINATED, 0, "x")
    assert len(dormant().replace(history=(record,) * 100).history) == 100
    with pytest.raises(ValueError, match="history holds at most 100"):
        dormant().replace(history=(record,) * 101)


def test_ids_consistent_with_stage():
    with pytest.raises(ValueError, match="DORMANT slot holds no seed"):
        dormant().replace(seed_id="s")
    with pytest.raises(ValueError, match="DORMANT slot holds no seed"):
        dormant().replace(blueprint_id="b")
    s = germinate(dormant(), "norm", "seed-1")
    for stage in (S.GERMINATED, S.TRAINING, S.PRUNED):
        with pytest.raises(ValueError, match="needs blueprint_id and seed_id"):
            s.replace(stage=stage, seed_id=None)
        with pytest.raises(ValueError, match="needs blueprint_id and seed_id"):
            s.replace(stage=stage, blueprint_id="")


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize("field", ["stage", "alpha", "b", "g", "history", "metrics", "epoch"])
def test_frozen(field):
    s = dormant()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, field, getattr(s, field))


def test_metrics_and_records_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SeedMetrics().epochs_total = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TransitionRecord(S.DORMANT, S.GERMINATED, 0, "x").reason = "y"  # type: ignore[misc]


def test_replace_returns_new_state_and_leaves_original():
    s = dormant()
    t = s.replace(epoch=5)
    assert t is not s and s.epoch == 0 and t.epoch == 5


def test_seed_metrics_deltas():
    m = SeedMetrics()
    assert (m.improvement, m.stage_improvement, m.blending_delta) == (0.0, 0.0, 0.0)
    m = m.replace(accuracy_at_germination=40.0, accuracy_at_stage_start=45.0,
                  accuracy_at_blending_start=48.0, current_accuracy=50.0, epochs_in_stage=3)
    assert (m.improvement, m.stage_improvement, m.blending_delta) == (10.0, 5.0, 2.0)
    n = m.entering_stage()
    assert n.epochs_in_stage == 0 and n.accuracy_at_stage_start == 50.0
    assert m.epochs_in_stage == 3


# --------------------------------------------------------------------------- pytree


def _states():
    g = germinate(dormant(alpha_mode="channel"), "norm", "seed-1", seed_params=7)
    return [dormant(), g, blending(), blending(alpha_mode="channel")]


@pytest.mark.parametrize("index", range(4))
def test_pytree_leaves_are_exactly_alpha_b_g(index):
    s = _states()[index]
    leaves = pytree.tree_leaves(s)
    assert len(leaves) == 3
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    assert leaves[0] is s.alpha and leaves[1] is s.b and leaves[2] is s.g
    nested = pytree.tree_leaves({"a": [s, s], "b": (s,)})
    assert len(nested) == 9 and all(isinstance(x, torch.Tensor) for x in nested)


@pytest.mark.parametrize("index", range(4))
def test_pytree_round_trip(index):
    s = _states()[index]
    leaves, spec = pytree.tree_flatten(s)
    back = pytree.tree_unflatten(leaves, spec)
    assert isinstance(back, SlotState)
    assert back == s
    for f in dataclasses.fields(SlotState):
        mine, theirs = getattr(back, f.name), getattr(s, f.name)
        if isinstance(theirs, torch.Tensor):
            assert mine is theirs
        else:
            assert mine == theirs


def test_pytree_paths_name_the_leaves():
    paths = [pytree.keystr(p) for p, _ in pytree.tree_flatten_with_path(blending())[0]]
    assert paths == [".alpha", ".b", ".g"]


def test_tree_map_rebuilds_with_new_leaves_and_same_static_data():
    s = blending().replace(alpha=torch.tensor(0.5))
    doubled = pytree.tree_map(lambda t: t * 1.0, s)
    assert doubled == s and doubled.alpha is not s.alpha
    assert doubled.stage is S.BLENDING and doubled.history == s.history


def test_seed_metrics_is_a_leafless_pytree():
    assert pytree.tree_leaves(SeedMetrics(epochs_total=3)) == []


def test_static_change_changes_the_spec_but_not_the_leaves():
    s = blending()
    t = s.replace(epoch=s.epoch + 1)
    assert pytree.tree_flatten(s)[1] != pytree.tree_flatten(t)[1]
    assert len(pytree.tree_leaves(t)) == 3


# --------------------------------------------------------------------------- equality / copy


def test_equality_compares_tensors_and_static_fields():
    s = blending()
    assert s == blending()
    assert s != s.replace(alpha=torch.tensor(0.25))
    assert s != s.replace(epoch=9)
    assert s != s.replace(last_gate=GateResult(GateLevel.G2, False, 0.0))
    assert dormant() != dormant(alpha_mode="channel")
    assert dormant() != SlotState.dormant("other", channels=4)
    assert (s == 1) is False
    assert s != "state"


def test_not_hashable():
    with pytest.raises(TypeError):
        hash(dormant())


@pytest.mark.parametrize("index", range(4))
def test_deepcopy_is_equal_and_independent(index):
    s = _states()[index]
    c = copy.deepcopy(s)
    assert c == s
    assert c.alpha is not s.alpha and c.alpha.data_ptr() != s.alpha.data_ptr()
    assert copy.copy(s) == s


def test_to_same_device():
    s = blending(alpha_mode="channel").replace(alpha=torch.linspace(0, 1, 4))
    t = s.to("cpu")
    assert t == s and isinstance(t, SlotState)
    assert all(x.device.type == "cpu" for x in pytree.tree_leaves(t))
    assert t.stage is s.stage and t.history == s.history and t.task == s.task


def test_to_meta_keeps_static_data():
    s = blending()
    m = s.to("meta")
    assert all(x.device.type == "meta" for x in pytree.tree_leaves(m))
    assert m.stage is S.BLENDING and m.seed_id == "seed-1"
    assert all(x.device.type == "cpu" for x in pytree.tree_leaves(s))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_and_back():
    s = blending(alpha_mode="channel").replace(alpha=torch.linspace(0, 1, 4))
    c = s.to("cuda")
    assert all(x.is_cuda for x in pytree.tree_leaves(c))
    assert c != s  # devices differ
    assert c.to("cpu") == s
    d = SlotState.dormant("mid", channels=4, device="cuda")
    assert all(x.is_cuda for x in pytree.tree_leaves(d))


# --------------------------------------------------------------------------- serialization


def _validated_holding() -> SlotState:
    s = germinate(dormant(gates=QualityGates(min_holding_epochs=2)), "norm", "seed-1")
    for stage in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING):
        s = transition(s, stage)
    return s.replace(alpha=torch.tensor(1.0), metrics=s.metrics.replace(
        epochs_in_stage=2, holding_contribution=1.5))


def test_serialized_state_carries_the_holding_validation():
    s = _validated_holding()
    data = state_to_dict(s)
    assert data["metrics"]["holding_contribution"] == 1.5
    assert data["gates"]["min_holding_epochs"] == 2
    back = state_from_dict(json.loads(json.dumps(data)))
    assert back == s and back.metrics.holding_contribution == 1.5


def test_state_written_before_holding_validation_loads_with_defaults():
    data = state_to_dict(_validated_holding())
    del data["metrics"]["holding_contribution"], data["gates"]["min_holding_epochs"]
    back = state_from_dict(data)
    assert back.metrics.holding_contribution is None  # HOLDING must be validated again
    assert back.gates.min_holding_epochs == 1
    assert back.metrics.epochs_in_stage == 2 and back.stage is SeedStage.HOLDING


def _frozen_in_training() -> SlotState:
    s = transition(germinate(dormant(), "norm", "seed-1"), SeedStage.TRAINING)
    return s.replace(metrics=s.metrics.replace(training_fingerprint="ab" * 32,
                                               weights_moved=False))


def test_serialized_state_carries_the_weights_baseline_and_verdict():
    s = _frozen_in_training()
    data = json.loads(json.dumps(state_to_dict(s)))
    assert data["metrics"]["training_fingerprint"] == "ab" * 32
    assert data["metrics"]["weights_moved"] is False
    back = state_from_dict(data)
    assert back == s and back.metrics.weights_moved is False
    assert back.metrics.training_fingerprint == "ab" * 32


def test_state_written_before_weights_were_watched_loads_unmeasured():
    data = state_to_dict(_frozen_in_training())
    del data["metrics"]["training_fingerprint"], data["metrics"]["weights_moved"]
    back = state_from_dict(data)
    assert back.metrics.training_fingerprint is None and back.metrics.weights_moved is None
    assert back.stage is SeedStage.TRAINING


@pytest.mark.parametrize(("section", "key"), [("metrics", "epochs_total"),
                                              ("gates", "min_fossilize_contribution")])
def test_only_the_added_fields_may_be_missing(section, key):
    data = state_to_dict(_validated_holding())
    del data[section][key]
    with pytest.raises(ValueError, match=rf"{section}: missing keys \['{key}'\]"):
        state_from_dict(data)
    data = state_to_dict(_validated_holding())
    data[section]["extra"] = 1
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        state_from_dict(data)
