"""Every row of the README's "Bad input" table, each a test, and the table checked against them.

Each case gives one bad input to the public API or the CLI and checks three
things: the exception (or, for signed commands and gate requests, the refusal
value), a fragment of the message that says what to do, and that nothing
changed: slot states, parameter values and identities, the CPU RNG, files.
``test_readme_table_and_cases_agree`` keeps the table and :data:`CASES` in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from esper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from esper.checkpoint.layout import current
from esper.cli import main
from esper.data import DatasetError, load_task
from esper.errors import (
    AlphaShapeError,
    AlphaValueError,
    AlreadyGraftedError,
    CandidatesUnsupportedError,
    EsperError,
    ExampleInputError,
    FastModeBindError,
    FossilizedSeedError,
    GraftCallCountError,
    GraftMismatchError,
    GraftOutputError,
    GraftShapeError,
    HostNotInOptimizerError,
    InputDtypeError,
    InputShapeError,
    InvalidTransitionError,
    NestedGraftPointError,
    NoLiveSeedError,
    ResumeConflictError,
    SeedRaisedError,
    SeedShapeError,
    SharedParameterError,
    SlotOccupiedError,
    StageError,
    StateDictMismatchError,
    TelemetryTypeError,
    TelemetryValueError,
    TopologyMismatchError,
    UnboundSeedWarning,
    UnknownBlueprintError,
    UnknownGraftPointError,
    UnknownSlotError,
    WeakCommandKeyError,
)
from esper.kasmina import blueprints, set_alpha, transition
from esper.leyline import EventType, SeedStage, SlotTelemetry, TaskConfig
from esper.nn.host import CNNHost, TransformerHost
from esper.nn.model import MorphogeneticModel
from esper.nn.slot import SeedSlot
from esper.optim import bind
from esper.tolaria.commands import CommandVerifier, LifecycleCommand, Verdict, sign
from esper.tolaria.config import GrowConfig
from esper.tolaria.progress import check_progress
from esper.tolaria.run import grow
from esper.tolaria.rundir import claim_run_dir
from tests.broken_modules import RaisingFactory, SeedFailure, Widen, registered
from tests.graft_models import mlp, resnet18, vectors
from tests.seed_training import nudge_training_seeds

README = Path(__file__).resolve().parents[1] / "README.md"
SLOTS = ("early", "mid", "late")
KEY = b"k" * 32
T0 = 1_000_000.0


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Case:
    """One table row: the test body and what the row's exception column must name."""

    run: Callable[[Path, pytest.CaptureFixture[str]], None]
    names: tuple[str, ...]


CASES: dict[str, Case] = {}


def case(row_id: str, *names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the test of README row ``row_id``; ``names`` appear in its exception column."""
    def register(run: Callable[..., None]) -> Callable[..., None]:
        assert row_id not in CASES, row_id
        CASES[row_id] = Case(run, names)
        return run
    return register


# --------------------------------------------------------------------------- helpers


def cnn_model(alpha_mode: str = "scalar") -> MorphogeneticModel:
    """A tiny three-slot CNN model (8x8 inputs) with a short lifecycle."""
    torch.manual_seed(0)
    task = TaskConfig(max_epochs=5, blending_steps=2, embargo_epochs=1)
    return MorphogeneticModel(CNNHost(base_channels=4), slots=SLOTS, task_config=task,
                              alpha_mode=alpha_mode)  # type: ignore[arg-type]


def images(batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def walk(model: MorphogeneticModel, slot: str, stage: SeedStage) -> None:
    """Germinate a ``norm`` seed in ``slot`` and drive it to ``stage`` with passing telemetry."""
    model.germinate_seed("norm", f"seed-{slot}", slot=slot)
    seed_slot = model.seed_slots[slot]
    accuracy = 50.0
    for _ in range(50):
        if seed_slot.state.stage == stage:
            return
        if seed_slot.state.metrics.holding_contribution is not None:  # validated in HOLDING
            assert seed_slot.fossilize(SlotTelemetry(accuracy)).passed
            continue
        accuracy += 1.0
        nudge_training_seeds(model)  # the epoch's training
        model.step_epoch({slot: SlotTelemetry(accuracy, counterfactual_contribution=2.0,
                                              seed_gradient_norm_ratio=0.5,
                                              probe_loss_reduction=0.01)})
    raise AssertionError(f"{slot} stuck in {seed_slot.state.stage.name}")


@dataclass
class Snapshot:
    """What "unchanged" means for a model: states, tensors (values and objects), the RNG."""

    states: dict[str, object]
    tensors: dict[str, Tensor]
    identities: list[int]
    rng: Tensor

    @classmethod
    def of(cls, model: nn.Module) -> Snapshot:
        states = ({name: slot.state for name, slot in model.seed_slots.items()}
                  if isinstance(model, MorphogeneticModel) else {})
        tensors = {k: v.detach().clone() for k, v in model.state_dict().items()
                   if isinstance(v, Tensor)}
        identities = [id(t) for t in (*model.parameters(), *model.buffers())]
        return cls(states, tensors, identities, torch.get_rng_state())

    def assert_same(self, model: nn.Module) -> None:
        after = Snapshot.of(model)
        assert after.states == self.states
        assert after.tensors.keys() == self.tensors.keys()
        for key, value in self.tensors.items():
            assert torch.equal(after.tensors[key], value), key
        assert after.identities == self.identities
        assert torch.equal(after.rng, self.rng)


@contextlib.contextmanager
def unchanged(model: nn.Module) -> Iterator[None]:
    """Assert that ``model`` (its slots, tensors) and the CPU RNG are as before the block."""
    snapshot = Snapshot.of(model)
    yield
    snapshot.assert_same(model)


def expect(error: type[BaseException], fragment: str, call: Callable[[], object]) -> str:
    """Run ``call``; it must raise exactly ``error`` with ``fragment`` in its message."""
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    message = str(info.value)
    assert fragment in message, message
    return message


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------- blueprints


@case("unknown-blueprint", "UnknownBlueprintError", "ValueError")
def _unknown_blueprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        message = expect(UnknownBlueprintError, "known cnn blueprints: noop, norm",
                         lambda: model.germinate_seed("nope", "s1", slot="mid"))
    assert "register" in message


@case("wrong-topology-blueprint", "TopologyMismatchError", "ValueError")
def _wrong_topology_blueprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        expect(TopologyMismatchError, "it is a transformer blueprint",
               lambda: model.germinate_seed("lora", "s1", slot="mid"))


@case("wrong-topology-task", "TopologyMismatchError", "ValueError")
def _wrong_topology_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = torch.get_rng_state()
    expect(TopologyMismatchError, "topology='cnn'",
           lambda: SeedSlot("mid", 8, topology="cnn",
                            task_config=TaskConfig(topology="transformer")))
    assert torch.equal(torch.get_rng_state(), rng)


@case("shape-changing-seed", "SeedShapeError", "ValueError")
def _shape_changing_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    blueprints.register(blueprints.BlueprintSpec("widen", "cnn", Widen))
    try:
        with unchanged(model):
            expect(SeedShapeError, "input (2, 8, 4, 4), output (2, 9, 4, 4)",
                   lambda: model.germinate_seed("widen", "s1", slot="mid"))
    finally:
        blueprints.unregister("cnn", "widen")


@case("raising-seed", "SeedRaisedError", "RuntimeError")
def _raising_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with registered("unbuildable", RaisingFactory()), unchanged(model):
        expect(SeedRaisedError, "blueprint 'unbuildable' raised while its seed for slot 'mid' "
               "was built and checked: SeedFailure: cannot build a seed",
               lambda: model.germinate_seed("unbuildable", "s1", slot="mid"))
        with pytest.raises(SeedRaisedError) as info:
            model.germinate_seed("unbuildable", "s1", slot="mid")
    assert isinstance(info.value.__cause__, SeedFailure)


# --------------------------------------------------------------------------- tournaments


class _DataDependent(nn.Module):
    """A seed whose forward branches on a parameter's value: torch.func.vmap refuses it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(-1, 1, 1) if float(self.scale.sum()) > 0 else x


@case("bad-candidate-count", "ValueError", "TypeError")
def _bad_candidate_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        for bad, error in ((0, ValueError), (17, ValueError), (2.0, TypeError),
                           (True, TypeError)):
            expect(error, "candidates must be an int",
                   lambda b=bad: model.germinate_seed("norm", "t", slot="mid", candidates=b))
    expect(ValueError, "candidates must be an int in [1, 16], got 0",
           lambda: GrowConfig(candidates=0))


@case("candidates-not-vmappable", "CandidatesUnsupportedError", "ValueError")
def _candidates_not_vmappable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with registered("data_dependent", _DataDependent), unchanged(model):
        message = expect(CandidatesUnsupportedError, "blueprint 'data_dependent' cannot run as "
                         "2 stacked candidates in slot 'mid' (torch.func.vmap",
                         lambda: model.germinate_seed("data_dependent", "t", slot="mid",
                                                      candidates=2))
        assert "germinate it alone (candidates=1)" in message
        expect(CandidatesUnsupportedError, "'noop' has no trainable parameters",
               lambda: model.germinate_seed("noop", "t", slot="mid", candidates=2))


@case("select-without-tournament", "StageError", "ValueError")
def _select_without_tournament(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    with unchanged(model):
        expect(StageError, "with no tournament of candidates (germinate with candidates=K >= 2)",
               lambda: model.select_candidate(slot="mid", scores=[0.1]))
    model.prune_seed(slot="mid")
    fresh = cnn_model()
    fresh.germinate_seed("norm", "t", slot="mid", candidates=3)
    with unchanged(fresh):
        expect(ValueError, "has 3 candidates, got 2 scores",
               lambda: fresh.select_candidate(slot="mid", scores=[0.1, 0.2]))


@case("candidates-changed-blueprint", "StateDictMismatchError", "CheckpointError",
      "RuntimeError")
def _candidates_changed_blueprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = cnn_model()
    with registered("grows", lambda c: nn.Conv2d(c, c, 1)):
        saved.germinate_seed("grows", "t", slot="mid", candidates=2)
        weights = saved.state_dict()
    model = cnn_model()
    with registered("grows", lambda c: nn.Conv2d(c, c, 3, padding=1)), unchanged(model):
        expect(StateDictMismatchError, "nothing was loaded",
               lambda: model.load_state_dict(weights))


# --------------------------------------------------------------------------- slots and stages


@case("unknown-slot", "UnknownSlotError", "ValueError")
def _unknown_slot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        expect(UnknownSlotError, "slots are ['early', 'mid', 'late']",
               lambda: model.germinate_seed("norm", "s1", slot="middle"))


@case("germinate-occupied-slot", "SlotOccupiedError", "RuntimeError")
def _germinate_occupied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    with unchanged(model):
        expect(SlotOccupiedError, "prune it first",
               lambda: model.germinate_seed("attention", "s2", slot="mid"))


@case("germinate-fossilized-slot", "SlotOccupiedError", "RuntimeError")
def _germinate_fossilized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.FOSSILIZED)
    with unchanged(model):
        expect(SlotOccupiedError, "germinate in another slot",
               lambda: model.germinate_seed("norm", "s2", slot="mid"))


@case("prune-fossil", "FossilizedSeedError", "ValueError")
def _prune_fossil(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.FOSSILIZED)
    with unchanged(model):
        expect(FossilizedSeedError, "fossilization is permanent",
               lambda: model.prune_seed(slot="mid"))


@case("prune-empty-slot", "NoLiveSeedError", "ValueError")
def _prune_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        expect(NoLiveSeedError, "no live seed to prune", lambda: model.prune_seed(slot="mid"))


@case("out-of-order-advance", "GateResult", "out_of_order")
def _out_of_order_advance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.TRAINING)
    with unchanged(model):
        result = model.seed_slots["mid"].advance_stage(SeedStage.FOSSILIZED)
    assert not result.passed and result.checks_failed == ("out_of_order",)
    assert "allowed: BLENDING, PRUNED" in result.message


@case("out-of-order-transition", "InvalidTransitionError", "ValueError")
def _out_of_order_transition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.TRAINING)
    state = model.seed_slots["mid"].state
    with unchanged(model):
        expect(InvalidTransitionError, "allowed: BLENDING, PRUNED",
               lambda: transition(state, SeedStage.FOSSILIZED))
    assert model.seed_slots["mid"].state is state


# --------------------------------------------------------------------------- alpha


@case("nan-alpha-override", "AlphaValueError", "ValueError")
def _nan_alpha_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.BLENDING)
    x = images()
    for value in (float("nan"), torch.tensor(float("nan")), torch.full((1,), 2.0).squeeze()):
        with unchanged(model):
            expect(AlphaValueError, "must be", lambda v=value: model(x, {"mid": v}))


@case("out-of-range-alpha", "AlphaValueError", "ValueError")
def _out_of_range_alpha(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    walk(model, "mid", SeedStage.BLENDING)
    slot = model.seed_slots["mid"]
    with unchanged(model):
        expect(AlphaValueError, "0 is the host alone, 1 the seed alone",
               lambda: set_alpha(slot.state, 1.5))
        refused = pytest.raises(AlphaValueError,
                                match=r"alpha override must be finite and in \[0, 1\]")
        with refused, slot.force_alpha(-0.25):
            pass


@case("wrong-length-channel-alpha", "AlphaShapeError", "ValueError")
def _wrong_length_channel_alpha(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model(alpha_mode="channel")
    walk(model, "mid", SeedStage.BLENDING)
    slot = model.seed_slots["mid"]
    wrong = torch.full((slot.channels + 1,), 0.5)
    with unchanged(model):
        expect(AlphaShapeError, f"shape ({slot.channels},)", lambda: set_alpha(slot.state, wrong))
        expect(AlphaShapeError, f"{slot.channels} channel values",
               lambda: model(images(), {"mid": wrong}))


# --------------------------------------------------------------------------- model input


@case("wrong-input-shape", "InputShapeError", "ValueError")
def _wrong_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    one_channel, unbatched = torch.zeros(2, 1, 8, 8), torch.zeros(3, 8, 8)
    with unchanged(model):
        expect(InputShapeError, "[B, 3, H, W]", lambda: model(one_channel))
        expect(InputShapeError, "[B, 3, H, W]", lambda: model(unbatched))


@case("too-small-input", "InputShapeError", "ValueError")
def _too_small_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    small = torch.zeros(2, 3, 4, 4)
    with unchanged(model):
        expect(InputShapeError, "H and W >= 8", lambda: model(small))


@case("wrong-input-dtype", "InputDtypeError", "TypeError")
def _wrong_input_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    with unchanged(model):
        expect(InputDtypeError, "x.to(torch.float32)", lambda: model(images().double()))
        expect(InputDtypeError, "x.to(torch.float32)", lambda: model(images().long()))
        expect(InputDtypeError, "torch.as_tensor", lambda: model(images().tolist()))


@case("wrong-token-dtype", "InputDtypeError", "TypeError")
def _wrong_token_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=16, n_embd=8, n_head=2, n_layer=3, block_size=8)
    model = MorphogeneticModel(host, slots=SLOTS)
    with unchanged(model):
        expect(InputDtypeError, ".long()", lambda: model(torch.zeros(2, 8)))
        expect(InputShapeError, "cut sequences to 8",
               lambda: model(torch.zeros(2, 9, dtype=torch.long)))


# --------------------------------------------------------------------------- telemetry


@case("malformed-telemetry-type", "TelemetryTypeError", "TypeError")
def _malformed_telemetry_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    expect(TelemetryTypeError, "must be a number", lambda: SlotTelemetry("high"))  # type: ignore[arg-type]
    with unchanged(model):
        expect(TelemetryTypeError, "SlotTelemetry(accuracy, ...)",
               lambda: model.step_epoch({"mid": SlotTelemetry(50.0),  # validated first
                                         "late": {"accuracy": 50.0}}))  # type: ignore[dict-item]


@case("malformed-telemetry-value", "TelemetryValueError", "ValueError")
def _malformed_telemetry_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect(TelemetryValueError, "count of leaking isolation probes",
           lambda: SlotTelemetry(50.0, isolation_violations=-1))
    expect(TelemetryValueError, "too large", lambda: SlotTelemetry(10**400))


# --------------------------------------------------------------------------- checkpoints


def _saved(tmp_path: Path, name: str,
           slots: tuple[str, ...] = SLOTS) -> tuple[Path, MorphogeneticModel]:
    """A saved tiny model with a seed in its last slot (the directory of its checkpoint
    version, which holds the two files), and the model."""
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=slots)
    model.germinate_seed("norm", "s1", slot=slots[-1])
    version = current(save_checkpoint(tmp_path / name, model=model))
    assert version is not None
    return version, model


def _refused_load(directory: Path, error: type[BaseException], fragment: str) -> None:
    """Loading ``directory`` raises; its files and the caller's RNG stay as they were."""
    before, rng = files_of(directory), torch.get_rng_state()
    expect(error, fragment, lambda: load_checkpoint(directory))
    assert files_of(directory) == before
    assert torch.equal(torch.get_rng_state(), rng)


@case("corrupt-checkpoint", "CheckpointError", "ValueError")
def _corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, _ = _saved(tmp_path, "ck")
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    _refused_load(directory, CheckpointError, "restore both files from the same save")


@case("mismatched-checkpoint", "CheckpointError", "ValueError")
def _mismatched_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, _ = _saved(tmp_path, "a")
    other, _ = _saved(tmp_path, "b", slots=("mid",))
    (directory / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    _refused_load(directory, CheckpointError, "restore both files from the same save")


@case("newer-checkpoint", "CheckpointError", "ValueError")
def _newer_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, _ = _saved(tmp_path, "ck")
    document = directory / "checkpoint.json"
    data = json.loads(document.read_text())
    document.write_text(json.dumps({**data, "schema_version": 99}))
    _refused_load(directory, CheckpointError, "written by a newer Esper")


@case("edited-checkpoint", "CheckpointError", "ValueError")
def _edited_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, _ = _saved(tmp_path, "ck")
    document = directory / "checkpoint.json"
    data = json.loads(document.read_text())
    data["slots"]["mid"]["seed_id"] = "=HYPERLINK(1)"
    document.write_text(json.dumps(data))
    _refused_load(directory, CheckpointError, "its checksum does not match its content")


@case("forged-progress", "CheckpointError", "ValueError")
def _forged_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    progress = {"epoch": 10, "records": [], "tally": {}, "events_written": -5,
                "global_step": 0, "controller": {"accuracies": [], "germinations": {},
                                                 "seeds_created": 0}}
    expect(CheckpointError, "epoch is 10 but the records are 0", lambda: check_progress(progress))
    progress["epoch"] = 0
    expect(CheckpointError, "events_written must be an int in [0",
           lambda: check_progress(progress))


@case("mismatched-state-dict", "StateDictMismatchError", "CheckpointError", "RuntimeError")
def _mismatched_state_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn_model()
    model.germinate_seed("norm", "s1", slot="mid")
    _, other = _saved(tmp_path, "other", slots=("early", "mid"))
    with unchanged(model):
        expect(StateDictMismatchError, "nothing was loaded",
               lambda: model.load_state_dict(other.state_dict()))


# --------------------------------------------------------------------------- grafting


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """As :func:`unchanged`, and no module gained or lost a hook or changed its mode."""
    hooks = {name: list(m._forward_hooks) for name, m in model.named_modules()}
    modes = {name: m.training for name, m in model.named_modules()}
    with unchanged(model):
        yield
    assert {name: list(m._forward_hooks) for name, m in model.named_modules()} == hooks
    assert {name: m.training for name, m in model.named_modules()} == modes


def resnet_images() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@case("graft-unknown-point", "UnknownGraftPointError", "ValueError")
def _graft_unknown_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = resnet18()
    with untouched(net):
        message = expect(UnknownGraftPointError, "close matches",
                         lambda: esper.graft(net, ["layer3.0", "layer5"],
                                             example_input=resnet_images()))
    assert "'layer5'" in message and "'layer1'" in message


@case("graft-non-tensor-output", "GraftOutputError", "TypeError")
def _graft_non_tensor_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            return self.rnn(x)[0].sum(dim=1)

    net, x = Recurrent(), torch.randn(2, 5, 4)
    with untouched(net):
        message = expect(GraftOutputError, "GraftPoint(select=",
                         lambda: esper.graft(net, ["rnn"], example_input=x))
        expect(GraftOutputError, "fits no element",
               lambda: esper.graft(net, {"rnn": esper.GraftPoint(select=2)}, example_input=x))
    assert "'rnn'" in message and "tuple of (Tensor, tuple)" in message


@case("graft-nested-points", "NestedGraftPointError", "ValueError")
def _graft_nested_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = resnet18()
    with untouched(net):
        message = expect(NestedGraftPointError, "graft one of them",
                         lambda: esper.graft(net, ["layer3", "layer3.0"],
                                             example_input=resnet_images()))
    assert "'layer3.0' lies inside 'layer3'" in message


@case("graft-call-count", "GraftCallCountError", "ValueError")
def _graft_call_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = resnet18()
    with untouched(net):
        expect(GraftCallCountError, "'layer1.0.relu' runs 2 times",
               lambda: esper.graft(net, ["layer1.0.relu"], example_input=resnet_images()))


@case("graft-unsupported-rank", "GraftShapeError", "ValueError")
def _graft_unsupported_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net, x = nn.Sequential(nn.Linear(6, 4), nn.Flatten(0)), torch.randn(2, 6)
    with untouched(net):
        message = expect(GraftShapeError, "[B, C] (mlp)",
                         lambda: esper.graft(net, ["1"], example_input=x))
    assert "'1'" in message and "(8,)" in message


@case("graft-shape-changed", "GraftShapeError", "ValueError")
def _graft_shape_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = esper.graft(nn.Sequential(nn.Identity(), nn.Flatten(1)), ["0"],
                        example_input=torch.randn(2, 6))
    assert model(torch.randn(5, 6)).shape == (5, 6)  # another batch size is fine
    wider, deeper = torch.randn(2, 7), torch.randn(2, 3, 6)
    with unchanged(model):
        message = expect(GraftShapeError, "only the dimensions other than the channels",
                         lambda: model(wider))
        expect(GraftShapeError, "6 channels", lambda: model(deeper))
    assert "graft point '0'" in message and "(2, 7)" in message


@case("graft-twice", "AlreadyGraftedError", "RuntimeError")
def _graft_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = resnet18()
    model = esper.graft(net, ["layer2"], example_input=resnet_images())
    with untouched(model):
        expect(AlreadyGraftedError, "graft it once",
               lambda: esper.graft(net, ["layer3"], example_input=resnet_images()))
        expect(AlreadyGraftedError, "graft the original module once",
               lambda: esper.graft(model, ["host.layer3"], example_input=resnet_images()))


@case("graft-failing-example", "ExampleInputError", "RuntimeError")
def _graft_failing_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net, wrong = resnet18().train(), torch.randn(2, 4, 32, 32)
    with untouched(net):
        with pytest.raises(ExampleInputError) as info:
            esper.graft(net, ["layer2"], example_input=wrong)
    assert "ResNet's forward raised on example_input" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "nothing was grafted" in str(info.value)


@case("graft-checkpoint-mismatch", "GraftMismatchError", "CheckpointError")
def _graft_checkpoint_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = esper.graft(resnet18(), ["layer3.0"], example_input=resnet_images())
    model.germinate_seed("norm", "s1", slot="layer3.0")
    esper.save(model, tmp_path / "ckpt")
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())  # not the ResNet that was grafted
    with untouched(other):
        expect(GraftMismatchError, "point 'layer3.0' names no submodule of Sequential",
               lambda: esper.load(other, tmp_path / "ckpt"))


# --------------------------------------------------------------------------- binding an optimizer


@contextlib.contextmanager
def unbound(model: MorphogeneticModel, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """As :func:`unchanged`, and the optimizer's groups and the slots' callbacks as before."""
    groups = [([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
              for g in optimizer.param_groups]
    callbacks = {name: slot.on_telemetry for name, slot in model.seed_slots.items()}
    with unchanged(model):
        yield
    assert groups == [([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
                      for g in optimizer.param_groups]
    assert callbacks == {name: slot.on_telemetry for name, slot in model.seed_slots.items()}


@case("bind-shared-parameter", "SharedParameterError", "ValueError")
def _bind_shared_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = esper.graft(mlp(), ["1", "3"], example_input=vectors())
    model.germinate_seed("lowrank", "s1", slot="3")
    optimizer = torch.optim.AdamW(model.parameters())   # the seed in the host's group
    with unbound(model, optimizer):
        expect(SharedParameterError, "build the optimizer from model.get_host_parameters()",
               lambda: bind(optimizer, model))
    host_only = torch.optim.AdamW(model.get_host_parameters())
    bind(host_only, model)
    with unbound(model, host_only):
        expect(SharedParameterError, "already bound", lambda: bind(host_only, model))


@case("bind-missing-host-parameters", "HostNotInOptimizerError", "ValueError")
def _bind_missing_host_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = esper.graft(mlp(), ["1", "3"], example_input=vectors())
    optimizer = torch.optim.SGD(model.host[0].parameters(), lr=0.1)   # first layer only
    with unbound(model, optimizer):
        expect(HostNotInOptimizerError, "holds 2 of the host's 6 parameters: 4 are missing",
               lambda: bind(optimizer, model))


@case("bind-fast-mode", "FastModeBindError", "ValueError")
def _bind_fast_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = esper.graft(mlp(), ["1", "3"], example_input=vectors(), fast_mode=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with unbound(model, optimizer):
        expect(FastModeBindError, "build the model with fast_mode=False",
               lambda: bind(optimizer, model))


@case("seed-outside-optimizer", "UnboundSeedWarning", "SEED_FROZEN", "weights_frozen")
def _seed_outside_optimizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events: list[object] = []
    x, y = vectors(16), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(3))
    model = esper.graft(mlp(), ["3"], example_input=x, on_telemetry=events.append,
                        task_config=TaskConfig(topology="mlp", max_epochs=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # before the seed, no bind
    model.germinate_seed("lowrank", "s1", slot="3")
    healthy = SlotTelemetry(50.0, seed_gradient_norm_ratio=0.5, probe_loss_reduction=0.01)
    model.step_epoch({"3": healthy})  # G1: TRAINING, the seed's weights fingerprinted
    seed = [p.detach().clone() for p in model.get_seed_parameters("3")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two epochs of the user's loop, G2 judged at the end of each
            for _ in range(3):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()  # the seed has gradients...
                optimizer.step()  # ...but no optimizer step moves it
            model.step_epoch({"3": healthy})
            gate = model.seed_slots["3"].state.last_gate
            assert gate is not None and gate.checks_failed == ("weights_frozen",)
    (warned,) = [w for w in caught if w.category is UnboundSeedWarning]  # once, not per epoch
    assert "add the seed's parameters to your optimizer: esper.optim.bind" in str(warned.message)
    (event,) = [e for e in events if e.type == EventType.SEED_FROZEN]  # type: ignore[attr-defined]
    assert "seed 's1' in slot '3' did not train" in event.payload["detail"]  # type: ignore[attr-defined]
    assert model.seed_slots["3"].state.stage == SeedStage.TRAINING
    assert all(torch.equal(a, b) for a, b in zip(seed, model.get_seed_parameters("3"),
                                                  strict=True))


# --------------------------------------------------------------------------- CLI and data


def run_cli(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``esper`` in-process; it must exit 2, write nothing, and explain on stderr."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(out)])
    assert info.value.code == 2
    assert not out.exists()
    return capsys.readouterr().err


@case("bad-cli-number", "SystemExit(2)")
def _bad_cli_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--epochs: must be >= 1, got 0" in run_cli(["grow", "--epochs", "0"], tmp_path, capsys)


@case("bad-cli-choice", "SystemExit(2)")
def _bad_cli_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(["grow", "--task", "mnist"], tmp_path, capsys)
    assert "invalid choice: 'mnist'" in err and "choose from" in err


@case("bad-cli-bound", "SystemExit(2)")
def _bad_cli_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
            (["--seed", "1e20"], "argument --seed: must be an integer in [0, 4294967295], "
                                 "got '1e20'"),
            (["--seed", str(2**32)], "argument --seed: must be an integer in [0, 4294967295], "
                                     "got 4294967296"),
            (["--seed", "-1"], "got -1"),
            (["--width", "100000"], "argument --width: must be <= 1024, got 100000"),
            (["--task", "chars", "--width", "6"], "--width must be a multiple of 4, got 6"),
            (["--lr", "1e30"], "argument --lr: must be a number in (0, 10], got 1e30"),
            (["--lr", "nan"], "argument --lr: must be a number in (0, 10], got nan"),
            (["--lr", "0"], "argument --lr: must be a number in (0, 10], got 0"),
            (["--candidates", "0"], "argument --candidates: must be >= 1, got 0"),
            (["--candidates", "17"], "argument --candidates: must be an integer in [1, 16], "
                                     "got 17")):
        assert message in run_cli(["grow", "--no-compile", *argv], tmp_path, capsys), argv


@case("bad-cli-hardware", "SystemExit(2)", "DeviceUnavailableError", "PrecisionUnsupportedError")
def _bad_cli_hardware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(["grow", "--precision", "fp16", "--device", "cpu"], tmp_path, capsys)
    assert "--precision fp16 needs a CUDA device" in err and "use --precision bf16 or fp32" in err
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("esper.tolaria.hardware.cpu_has_bf16", lambda: False)
        err = run_cli(["grow", "--precision", "bf16", "--device", "cpu"], tmp_path, capsys)
        assert "--precision bf16: this CPU has no bfloat16 support; use --precision fp32" in err
        patch.setattr(torch.cuda, "is_available", lambda: False)
        err = run_cli(["grow", "--device", "cuda"], tmp_path, capsys)
        assert "--device cuda: CUDA is not available" in err and "available: cpu" in err
    for option, value in (("--optimizer", "adam"), ("--schedule", "step"),
                          ("--precision", "fp8"), ("--device", "tpu")):
        err = run_cli(["grow", option, value], tmp_path, capsys)
        assert f"argument {option}: invalid choice: '{value}'" in err


@case("bad-cli-backend", "SystemExit(2)")
def _bad_cli_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(["grow", "--compile-backend", "bogus"], tmp_path, capsys)
    assert "argument --compile-backend: unknown torch.compile backend 'bogus'; known: " in err
    assert "aot_eager" in err and "inductor" in err


@case("empty-run-directory", "SystemExit(2)")
def _empty_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(SystemExit) as info:
            main(["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--out", ""])
    finally:
        os.chdir(here)
    assert info.value.code == 2
    assert "argument --out: must name a directory, got an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


QUICK_RUN = ["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--quiet"]


def tree_of(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` and its bytes (``None`` for a directory)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
            for p in sorted(directory.rglob("*"))}


@case("existing-run-directory", "RunDirectoryExistsError", "FileExistsError", "SystemExit(2)")
def _existing_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*QUICK_RUN, "--out", str(out)]) == 0
    capsys.readouterr()
    before = tree_of(out)
    assert "checkpoint/LATEST" in before and "checkpoint/ckpt-000001/checkpoint.json" in before
    with pytest.raises(SystemExit) as info:
        main([*QUICK_RUN, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {out}: the directory already holds a run" in err
    assert "continue it with --resume, replace it with --overwrite" in err
    assert tree_of(out) == before


@case("resume-conflicting-option", "ResumeConflictError", "ValueError", "SystemExit(2)")
def _resume_conflicting_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*QUICK_RUN, "--epochs", "2", "--lr", "0.1", "--out", str(out)]) == 0
    capsys.readouterr()
    before = tree_of(out)
    for extra, message in ((["--lr", "0.2"], "--lr 0.2 conflicts with the run's --lr 0.1"),
                           (["--epochs", "1"], "--epochs 1 is fewer than the 2 epochs the run "
                                               "has done")):
        with pytest.raises(SystemExit) as info:
            main(["grow", "--resume", str(out), *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"esper: error: --resume {out}: {message}" in err
        assert "only --compile, --compile-backend, --data-dir, --device, --epochs, --quiet, " \
               "--stop-after may change" in err
        assert tree_of(out) == before
    with pytest.raises(SystemExit):
        main(["grow", "--resume", str(out), "--optimizer", "adamw"])
    assert ("--optimizer adamw conflicts with the run's --optimizer sgd"
            in capsys.readouterr().err)
    assert tree_of(out) == before
    expect(ResumeConflictError, "--lr 0.2 conflicts with the run's --lr 0.1", lambda: grow(
        GrowConfig(epochs=2, lr=0.2, limit=16, compile=False, quiet=True, out=out), resume=out))
    assert tree_of(out) == before


@case("resume-other-directory", "ResumeConflictError", "ValueError", "SystemExit(2)")
def _resume_other_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, other = tmp_path / "run", tmp_path / "other"
    assert main([*QUICK_RUN, "--out", str(out)]) == 0
    capsys.readouterr()
    before = tree_of(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["grow", "--resume", str(out), "--out", str(other)])
    assert info.value.code == 2
    assert (f"--resume {out}: --out {other} conflicts with the run's directory {out}: a resumed "
            "run continues in its own directory; leave --out out" in capsys.readouterr().err)
    assert tree_of(tmp_path) == before


@case("locked-run-directory", "RunDirectoryLockedError", "OSError", "SystemExit(2)")
def _locked_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    with claim_run_dir(out):  # this process holds it, as another run would
        before = tree_of(out)
        for extra in ([], ["--overwrite"]):
            with pytest.raises(SystemExit) as info:
                main([*QUICK_RUN, "--out", str(out), *extra])
            assert info.value.code == 2
            assert (f"--out {out}: the run directory is locked by another esper run "
                    f"(pid {os.getpid()}); wait for it to end" in capsys.readouterr().err)
        assert tree_of(out) == before == {".esper.lock": f"{os.getpid()}\n".encode()}


@case("bad-cli-blueprint", "SystemExit(2)", "UnknownBlueprintError")
def _bad_cli_blueprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(["grow", "--blueprints", "nope", "--epochs", "1", "--limit", "16"],
                  tmp_path, capsys)
    assert "esper: error: unknown cnn blueprints ['nope']" in err
    assert "choose among those (--blueprints)" in err


@case("bad-cli-slot", "SystemExit(2)", "UnknownSlotError")
def _bad_cli_slot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli(["grow", "--slots", "middle", "--epochs", "1", "--limit", "16"], tmp_path, capsys)
    assert "this host's injection points are ['early', 'mid', 'late']" in err


@case("missing-data-directory", "DatasetError", "ValueError", "SystemExit(2)")
def _missing_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-cifar"
    expect(DatasetError, "download the CIFAR-10 python version",
           lambda: load_task("cifar10", data_dir=missing))
    err = run_cli(["grow", "--task", "cifar10", "--data-dir", str(missing)], tmp_path, capsys)
    assert f"'{missing}' is not a directory; download" in err
    assert not missing.exists()


@contextlib.contextmanager
def command_key(value: str | None) -> Iterator[None]:
    """``ESPER_COMMAND_KEY`` set to ``value`` (unset for ``None``) for the block only."""
    saved = os.environ.pop("ESPER_COMMAND_KEY", None)
    if value is not None:
        os.environ["ESPER_COMMAND_KEY"] = value
    try:
        yield
    finally:
        os.environ.pop("ESPER_COMMAND_KEY", None)
        if saved is not None:
            os.environ["ESPER_COMMAND_KEY"] = saved


@case("bad-cli-controller", "SystemExit(2)")
def _bad_cli_controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = tmp_path / "commands.jsonl"
    commands.write_text("")
    for extra in (["--controller", "external"], ["--commands", str(commands)]):
        err = run_cli(["grow", "--epochs", "1", "--limit", "16", *extra], tmp_path, capsys)
        assert "--controller external and --commands PATH go together" in err
    assert commands.read_text() == ""


@case("missing-command-key", "SystemExit(2)")
def _missing_command_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = tmp_path / "commands.jsonl"
    commands.write_text("")
    argv = ["grow", "--epochs", "1", "--limit", "16", "--controller", "external",
            "--commands", str(commands)]
    with command_key(None):
        err = run_cli(argv, tmp_path, capsys)
    assert "environment variable ESPER_COMMAND_KEY is unset or empty" in err


@case("missing-commands-file", "CommandSourceError", "OSError", "SystemExit(2)")
def _missing_commands_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-commands"
    argv = ["grow", "--epochs", "1", "--limit", "16", "--controller", "external",
            "--commands", str(missing)]
    with command_key("k" * 32):
        err = run_cli(argv, tmp_path, capsys)
    assert f"--commands {missing}: No such file or directory; create the file" in err
    assert not missing.exists()


@case("short-command-key", "WeakCommandKeyError", "ValueError", "SystemExit(2)")
def _short_command_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect(WeakCommandKeyError, "the command key is 1 bytes; at least 16 are needed",
           lambda: CommandVerifier(b"k"))
    commands = tmp_path / "commands.jsonl"
    commands.write_text("")
    argv = ["grow", "--epochs", "1", "--limit", "16", "--controller", "external",
            "--commands", str(commands)]
    for short in ("k", "fifteen bytes!!", "hex:" + "ab" * 15):
        with command_key(short):
            err = run_cli(argv, tmp_path, capsys)
        assert "ESPER_COMMAND_KEY: the key is" in err and "at least 16 are needed" in err
        assert 'export ESPER_COMMAND_KEY="hex:$(openssl rand -hex 32)"' in err
    assert commands.read_text() == ""


@case("seed-mismatch-command", "COMMAND_REJECTED", "seed_mismatch")
def _seed_mismatch_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands, out = tmp_path / "commands.jsonl", tmp_path / "run"
    signed = [LifecycleCommand("germinate", "mid", "norm", "s1", time.time(), "n-1"),
              LifecycleCommand("prune", "mid", None, "ghost", time.time(), "n-2")]
    commands.write_text("".join(sign(c, KEY).to_json() + "\n" for c in signed))
    with command_key(KEY.decode()):
        assert main(["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--quiet",
                     "--slots", "mid", "--controller", "external", "--commands",
                     str(commands), "--out", str(out)]) == 0
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    rejected = [e["payload"] for e in events if e.get("type") == "COMMAND_REJECTED"]
    assert [(p["reason"], p["detail"]) for p in rejected] == [(
        "seed_mismatch",
        "the prune command names seed 'ghost', but slot 'mid' holds seed 's1' (GERMINATED)")]
    assert not any(e.get("type") == "SEED_PRUNED" for e in events)
    state = load_checkpoint(out / "checkpoint").model.slot_states()["mid"]
    assert (state.seed_id, state.stage) == ("s1", SeedStage.GERMINATED)


# --------------------------------------------------------------------------- signed commands


class Commands:
    """A verifier with a settable clock, its rejection events, and a model to command."""

    def __init__(self) -> None:
        self.now = T0
        self.events: list[object] = []
        self.verifier = CommandVerifier(KEY, freshness_s=30.0, clock=lambda: self.now,
                                        known_slots=frozenset(SLOTS), on_event=self.events.append)
        self.model = cnn_model()

    def line(self, nonce: str = "n-1", issued_at: float = T0, slot: str = "mid",
             key: bytes = KEY) -> str:
        command = LifecycleCommand("germinate", slot, "norm", "s1", issued_at, nonce)
        return sign(command, key).to_json()

    def submit(self, line: str) -> Verdict:
        """Verify ``line`` and apply it only if accepted (the external controller's loop)."""
        verdict = self.verifier.verify(line)
        if verdict.accepted:
            assert verdict.command is not None
            command = verdict.command
            self.model.germinate_seed(command.blueprint_id or "", command.seed_id or "",
                                      slot=command.slot)
        return verdict

    def refused(self, line: str, reason: str) -> None:
        """``line`` is rejected for ``reason``: reported, nothing recorded, nothing applied."""
        nonces, events = self.verifier.nonce_count, len(self.events)
        with unchanged(self.model):
            verdict = self.submit(line)
        assert (verdict.accepted, verdict.reason, verdict.command) == (False, reason, None)
        assert self.verifier.nonce_count == nonces
        assert len(self.events) == events + 1
        event = self.events[-1]
        assert event.type == EventType.COMMAND_REJECTED  # type: ignore[attr-defined]
        assert event.payload["reason"] == reason  # type: ignore[attr-defined]


@case("tampered-command", "Verdict", "bad_signature")
def _tampered_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    commands.refused(commands.line().replace('"s1"', '"s2"'), "bad_signature")
    commands.refused(commands.line(key=b"not the key"), "bad_signature")


@case("replayed-command", "Verdict", "replayed_nonce")
def _replayed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    line = commands.line()
    assert commands.submit(line).accepted
    assert commands.model.seed_slots["mid"].state.stage == SeedStage.GERMINATED
    commands.refused(line, "replayed_nonce")


@case("stale-command", "Verdict", "stale")
def _stale_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    commands.now = T0 + 31.0
    commands.refused(commands.line(), "stale")


@case("future-command", "Verdict", "future")
def _future_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    commands.refused(commands.line(issued_at=T0 + 60.0), "future")


@case("malformed-command", "Verdict", "malformed")
def _malformed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    commands.refused('{"command": {"action": "germinate"}}', "malformed")
    commands.refused("not json", "malformed")
    named = sign(LifecycleCommand("germinate", "mid", "norm", "s1", T0, "n-1", "gated"), KEY)
    for bad in ('"cubic"', "null"):
        commands.refused(named.to_json().replace('"gated"', bad), "malformed")
    prune = sign(LifecycleCommand("prune", "mid", None, "s1", T0, "n-1"), KEY).to_json()
    commands.refused(prune.replace('"nonce"', '"blend_algorithm_id":"linear","nonce"'),
                     "malformed")


@case("unknown-slot-command", "Verdict", "unknown_slot")
def _unknown_slot_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = Commands()
    commands.refused(commands.line(slot="middle"), "unknown_slot")


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("row_id", sorted(CASES))
def test_bad_input(row_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    CASES[row_id].run(tmp_path, capsys)


def readme_rows() -> dict[str, str]:
    """Row id -> the exception column, from the README's "Bad input" table."""
    section = re.search(r"^## Bad input\n(.*?)(?=^## )", README.read_text(),
                        flags=re.DOTALL | re.MULTILINE)
    assert section is not None, 'README.md has no "## Bad input" section'
    rows: dict[str, str] = {}
    for line in section.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if line.startswith("|") else None
        if match:
            assert match.group(1) not in rows, f"row {match.group(1)} appears twice"
            rows[match.group(1)] = cells[3]
    return rows


def test_readme_table_and_cases_agree() -> None:
    rows = readme_rows()
    assert sorted(rows) == sorted(CASES), "README rows and test cases differ"
    for row_id, column in rows.items():
        for name in CASES[row_id].names:
            assert name in column, f"row {row_id}: exception column {column!r} lacks {name!r}"


def test_every_error_is_exported_and_keeps_its_builtin_base() -> None:
    exported = {name: getattr(esper, name) for name in esper.__all__
                if name.endswith(("Error", "Warning"))}
    assert set(exported) == set(esper.errors.__all__)
    for name, error in exported.items():
        if name.endswith("Warning"):  # a run that goes on: a UserWarning, never an EsperError
            assert issubclass(error, UserWarning) and not issubclass(error, EsperError), name
            continue
        assert issubclass(error, EsperError), name
        assert error is EsperError or issubclass(
            error, ValueError | TypeError | RuntimeError | OSError)
    assert esper.CheckpointError is CheckpointError and esper.DatasetError is DatasetError
