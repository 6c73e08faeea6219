"""A stateful fuzzer: random lifecycle, training, alpha, checkpoint and command sequences.

Hypothesis drives a tiny :class:`MorphogeneticModel` through germinate, prune,
step, advance, fossilize, forward/backward, alpha overrides, ``set_alpha``,
checkpoint round trips and signed commands, valid and invalid alike. A valid
request must succeed; an invalid one must raise its documented exception and
change nothing. After every rule the invariants hold: every stage change is in
the transition table, a fossil is never pruned or replaced, a slot holds a
seed module exactly when its state says so, and parameters stay finite.
Outputs of finite inputs are finite, and a saved-and-loaded model computes
bit-identical outputs.

The run is derandomized (the same examples every time) and sized to take
well under a minute on two CPU cores.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from torch import Tensor

from esper.checkpoint import load_checkpoint, save_checkpoint
from esper.errors import (
    AlphaShapeError,
    AlphaValueError,
    FossilizedSeedError,
    NoLiveSeedError,
    SlotOccupiedError,
    StageError,
    TopologyMismatchError,
    UnknownBlueprintError,
    UnknownSlotError,
)
from esper.kasmina import blueprints, set_alpha
from esper.leyline import (
    EventType,
    QualityGates,
    SeedStage,
    SlotTelemetry,
    TaskConfig,
    is_valid_transition,
)
from esper.leyline.constants import BLEND_ALGORITHMS
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.tolaria.commands import CommandVerifier, LifecycleCommand, sign
from tests.seed_training import nudge_training_seeds

SLOTS = ("mid", "late")  # two of the host's three points: seeds meet often enough to grow up
SLOT_NAMES = (*SLOTS, "early", "nowhere")  # a point without a slot, and no point at all
CNN_BLUEPRINTS = blueprints.names("cnn")
BLUEPRINT_NAMES = (*CNN_BLUEPRINTS, "lora", "nope")  # a transformer one, and none at all
LIVE = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING,
                  SeedStage.HOLDING})
STARTS = (SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING,
          SeedStage.HOLDING, SeedStage.FOSSILIZED, SeedStage.PRUNED)
KEY = b"fuzz-key" * 4
T0 = 1_000_000.0
FRESHNESS_S = 30.0

finite_accuracy = st.floats(0.0, 100.0, allow_nan=False)
accuracies = finite_accuracy | st.just(float("nan"))
optional_numbers = st.none() | st.floats(-5.0, 5.0, allow_nan=False) | st.just(float("nan"))
alpha_values = st.floats(-0.5, 1.5, allow_nan=False) | st.just(float("nan")) | st.just(1.0)
telemetries = st.builds(SlotTelemetry, accuracies, optional_numbers,
                        st.none() | st.floats(0.0, 2.0), st.integers(0, 2), st.booleans(),
                        optional_numbers)


def valid_alpha(value: float, as_tensor: bool = False) -> bool:
    """Whether ``value`` is a valid alpha; as a float32 tensor, -1e-300 rounds to -0.0 (valid)."""
    if as_tensor:
        value = float(torch.tensor(value, dtype=torch.float32))
    return 0.0 <= value <= 1.0  # False for NaN


# The machine walks seeds through G2 without training them: the frozen-seed warning is the
# designed answer (tests/nn/test_frozen_seed.py checks it), not noise to report here.
pytestmark = pytest.mark.filterwarnings("ignore::esper.errors.UnboundSeedWarning")


class Unchanged:
    """Asserts that a model's slot states, tensors (values and objects) and the RNG are kept."""

    def __init__(self, model: MorphogeneticModel) -> None:
        self.model = model
        self.states = model.slot_states()
        self.tensors = {k: v.detach().clone() for k, v in model.state_dict().items()
                        if isinstance(v, Tensor)}
        self.identities = [id(t) for t in (*model.parameters(), *model.buffers())]
        self.rng = torch.get_rng_state()

    def check(self) -> None:
        model = self.model
        assert model.slot_states() == self.states
        tensors = {k: v for k, v in model.state_dict().items() if isinstance(v, Tensor)}
        assert tensors.keys() == self.tensors.keys()
        assert all(torch.equal(tensors[k], v) for k, v in self.tensors.items())
        assert [id(t) for t in (*model.parameters(), *model.buffers())] == self.identities
        assert torch.equal(torch.get_rng_state(), self.rng)


def refused(model: MorphogeneticModel, error: type[BaseException], call: Any) -> None:
    """``call()`` raises ``error`` (or a subclass) and leaves ``model`` as it was."""
    before = Unchanged(model)
    with pytest.raises(error):
        call()
    before.check()


class LifecycleMachine(RuleBasedStateMachine):
    """One model, driven by random requests; each rule knows whether its request is valid."""

    @initialize(alpha_mode=st.sampled_from(("scalar", "channel")),
                start=st.sampled_from(STARTS), blueprint=st.sampled_from(CNN_BLUEPRINTS),
                algorithm=st.sampled_from(BLEND_ALGORITHMS))
    def build(self, alpha_mode: str, start: SeedStage, blueprint: str, algorithm: str) -> None:
        """A fresh model whose ``mid`` seed starts at ``start`` (the rules go on from there)."""
        self.create(alpha_mode)
        if start != SeedStage.DORMANT:
            self.model.germinate_seed(blueprint, self.new_seed_id(), slot="mid",
                                      blend_algorithm_id=algorithm)
        self.grow("mid", start)
        self.seen = self.model.slot_states()

    def grow(self, slot: str, stage: SeedStage) -> None:
        """Drive ``slot`` to ``stage`` with passing telemetry (or a prune, for PRUNED)."""
        seed_slot = self.model.seed_slots[slot]
        for _ in range(30):
            if seed_slot.state.stage == stage:
                return
            if stage == SeedStage.PRUNED:
                self.model.prune_seed(slot=slot)
            elif seed_slot.state.stage == SeedStage.HOLDING \
                    and seed_slot.state.metrics.holding_contribution is not None:
                assert seed_slot.fossilize(SlotTelemetry(self.accuracy, 2.0)).passed
            else:  # an epoch in HOLDING at alpha 1 records the counterfactual G5 needs
                self.step_healthy()
        raise AssertionError(f"{slot} did not reach {stage.name}: {seed_slot.state}")

    def create(self, alpha_mode: str) -> None:
        """The model, its input, a checkpoint directory, a command verifier, the bookkeeping."""
        torch.manual_seed(0)
        # A short lifecycle, so that a few dozen steps reach HOLDING and FOSSILIZED.
        task = TaskConfig(max_epochs=4, blending_steps=2, embargo_epochs=1)
        self.events: list[Any] = []
        self.model = MorphogeneticModel(CNNHost(base_channels=2), slots=SLOTS, task_config=task,
                                        alpha_mode=alpha_mode,  # type: ignore[arg-type]
                                        on_telemetry=self.events.append,
                                        gates=QualityGates(min_blending_epochs=1))
        self.x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        self.directory = Path(tempfile.mkdtemp(prefix="esper-fuzz-"))
        self.now = T0
        self.verifier = CommandVerifier(KEY, freshness_s=FRESHNESS_S, clock=lambda: self.now,
                                        known_slots=frozenset(SLOTS))
        self.accepted: list[tuple[str, float]] = []  # signed lines and when they were issued
        self.seeds = 0
        self.accuracy = 50.0
        self.fossils: dict[str, str] = {}

    def teardown(self) -> None:
        directory = getattr(self, "directory", None)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def stage(self, slot: str) -> SeedStage:
        return self.model.seed_slots[slot].state.stage

    def new_seed_id(self) -> str:
        self.seeds += 1
        return f"seed-{self.seeds}"

    def germinate_error(self, slot: str, blueprint: str) -> type[BaseException] | None:
        """The exception a germination must raise, or ``None`` when it is valid."""
        if slot not in SLOTS:
            return UnknownSlotError
        if self.stage(slot) != SeedStage.DORMANT:
            return SlotOccupiedError
        if blueprint not in CNN_BLUEPRINTS:
            return TopologyMismatchError if blueprint in blueprints.names("transformer") \
                else UnknownBlueprintError
        return None

    def prune_error(self, slot: str) -> type[BaseException] | None:
        if slot not in SLOTS:
            return UnknownSlotError
        if self.stage(slot) == SeedStage.FOSSILIZED:
            return FossilizedSeedError
        return None if self.stage(slot) in LIVE else NoLiveSeedError

    def alpha_tensor(self, slot: str, value: float, wrong_length: bool = False) -> Tensor:
        channels = self.model.seed_slots[slot].channels + int(wrong_length)
        return torch.full((channels,), value)

    # ------------------------------------------------------------------ lifecycle rules

    @rule(slot=st.sampled_from(SLOT_NAMES), blueprint=st.sampled_from(BLUEPRINT_NAMES),
          algorithm=st.sampled_from(BLEND_ALGORITHMS))
    def germinate(self, slot: str, blueprint: str, algorithm: str) -> None:
        self.plant(slot, blueprint, algorithm, self.new_seed_id())

    def plant(self, slot: str, blueprint: str, algorithm: str, seed_id: str) -> None:
        """Germinate, or check the documented refusal when the request is invalid."""
        error = self.germinate_error(slot, blueprint)
        call = lambda: self.model.germinate_seed(blueprint, seed_id, slot=slot,
                                                 blend_algorithm_id=algorithm)
        if error is not None:
            refused(self.model, error, call)
            return
        state = call()
        assert state.stage == SeedStage.GERMINATED and state.seed_id == seed_id
        assert self.model.seed_slots[slot].seed is not None

    @rule(slot=st.sampled_from(SLOT_NAMES))
    def prune(self, slot: str) -> None:
        error = self.prune_error(slot)
        if error is not None:
            refused(self.model, error, lambda: self.model.prune_seed(slot=slot))
            return
        assert self.model.prune_seed(slot=slot, reason="fuzz").stage == SeedStage.PRUNED
        assert self.model.seed_slots[slot].seed is None

    @rule(slot=st.sampled_from(SLOTS), telemetry=telemetries)
    def step_random(self, slot: str, telemetry: SlotTelemetry) -> None:
        self.model.step_epoch({slot: telemetry})

    @rule()
    def step_healthy(self) -> None:
        """An epoch of every slot with telemetry that passes the gates (seeds grow up)."""
        self.accuracy += 1.0
        healthy = SlotTelemetry(self.accuracy, 2.0, 0.5, probe_loss_reduction=0.01)
        nudge_training_seeds(self.model)  # the epoch's training: the seeds' weights move
        self.model.step_epoch(dict.fromkeys(SLOTS, healthy))

    @rule(slot=st.sampled_from(SLOTS), stage=st.sampled_from(list(SeedStage)),
          telemetry=telemetries)
    def advance(self, slot: str, stage: SeedStage, telemetry: SlotTelemetry) -> None:
        """A request for any stage: granted only along the table (``target`` is reserved)."""
        before = self.stage(slot)
        result = self.model.seed_slots[slot].advance_stage(stage, telemetry)
        if result.passed:
            assert is_valid_transition(before, stage) and self.stage(slot) == stage
        else:
            assert self.stage(slot) == before

    @rule(slot=st.sampled_from(SLOTS), contribution=st.floats(-2.0, 5.0))
    def fossilize(self, slot: str, contribution: float) -> None:
        before = self.stage(slot)
        held = self.model.seed_slots[slot].state
        result = self.model.seed_slots[slot].fossilize(SlotTelemetry(60.0, contribution))
        if result.passed:
            assert before == SeedStage.HOLDING and self.stage(slot) == SeedStage.FOSSILIZED
            # G5 judged what an epoch in HOLDING recorded at alpha 1, not this reading
            recorded = held.metrics.holding_contribution
            assert recorded is not None and recorded >= held.gates.min_fossilize_contribution
            assert held.metrics.epochs_in_stage >= held.gates.min_holding_epochs
            assert bool((held.alpha == 1.0).all())
        else:
            assert self.stage(slot) == before

    def holding(self) -> list[str]:
        return [slot for slot in SLOTS if self.stage(slot) == SeedStage.HOLDING]

    @precondition(lambda self: bool(self.holding()))
    @rule(data=st.data())
    def fossilize_holding(self, data: st.DataObject) -> None:
        """Fossilize a HOLDING seed (random slots rarely find one), maybe on a failing G5."""
        slot = data.draw(st.sampled_from(self.holding()))
        self.fossilize(slot, data.draw(st.sampled_from((0.0, 2.0, 2.0))))

    # ------------------------------------------------------------------ alpha rules

    @rule(slot=st.sampled_from(SLOTS), value=alpha_values, wrong_length=st.booleans())
    def set_alpha(self, slot: str, value: float, wrong_length: bool) -> None:
        seed_slot = self.model.seed_slots[slot]
        channel = seed_slot.state.alpha_mode == "channel"
        alpha: float | Tensor = self.alpha_tensor(slot, value, wrong_length) if channel else value
        call = lambda: setattr(seed_slot, "state", set_alpha(seed_slot.state, alpha))
        if self.stage(slot) not in (SeedStage.BLENDING, SeedStage.HOLDING):
            refused(self.model, StageError, call)
        elif channel and wrong_length:
            refused(self.model, AlphaShapeError, call)
        elif not valid_alpha(value, as_tensor=channel):
            refused(self.model, AlphaValueError, call)
        else:
            call()
            assert torch.allclose(seed_slot.state.alpha, torch.as_tensor(alpha))

    @rule(slot=st.sampled_from(SLOT_NAMES), value=alpha_values, as_tensor=st.booleans())
    def alpha_override(self, slot: str, value: float, as_tensor: bool) -> None:
        alpha: float | Tensor = torch.tensor(value) if as_tensor else value
        call = lambda: self.model(self.x, {slot: alpha})
        self.model.eval()
        if slot not in SLOTS:
            refused(self.model, UnknownSlotError, call)
        elif not valid_alpha(value, as_tensor):
            refused(self.model, AlphaValueError, call)
        else:
            before = Unchanged(self.model)
            with torch.no_grad():
                assert torch.isfinite(call()).all()
            before.check()
        self.model.train()

    # ------------------------------------------------------------------ training rules

    @rule(lr=st.sampled_from((0.0, 0.01, 0.1)))
    def forward_backward(self, lr: float) -> None:
        """One SGD step on a finite batch: the output and every gradient stay finite."""
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        out = self.model(self.x)
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        with torch.no_grad():
            for param in self.model.parameters():
                if param.grad is not None:
                    assert torch.isfinite(param.grad).all()
                    param -= lr * param.grad
        self.model.zero_grad(set_to_none=True)

    @rule(adopt=st.booleans())
    def checkpoint_round_trip(self, adopt: bool) -> None:
        """Save, load: the same states, tensors and outputs; maybe carry on with the copy."""
        save_checkpoint(self.directory, model=self.model, trainer_state={"seeds": self.seeds})
        loaded = load_checkpoint(self.directory).model
        assert loaded.slot_states() == self.model.slot_states()
        mine, theirs = self.model.state_dict(), loaded.state_dict()
        tensors = [k for k, v in mine.items() if isinstance(v, Tensor)]
        assert tensors == [k for k, v in theirs.items() if isinstance(v, Tensor)]
        assert all(torch.equal(mine[k], theirs[k]) for k in tensors)
        self.model.eval()
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(self.model(self.x), loaded(self.x))
        self.model.train()
        loaded.train()
        if adopt:
            for slot in loaded.seed_slots.values():
                slot.on_telemetry = self.events.append
            self.model = loaded

    # ------------------------------------------------------------------ command rules

    @rule(slot=st.sampled_from(SLOTS), action=st.sampled_from(("germinate", "prune", "fossilize")),
          blueprint=st.sampled_from(BLUEPRINT_NAMES),
          attack=st.sampled_from((None, "tamper", "replay", "stale", "future")))
    def command(self, slot: str, action: str, blueprint: str, attack: str | None) -> None:
        """A signed command: rejected ones change nothing; accepted ones are applied."""
        self.now += 1.0
        if attack == "replay" and not self.accepted:
            attack = None
        line, issued = self.signed_line(slot, action, blueprint, attack)
        before = Unchanged(self.model)
        nonces = self.verifier.nonce_count
        verdict = self.verifier.verify(line)
        if attack is not None:
            expected = {"tamper": "bad_signature", "replay": "replayed_nonce", "stale": "stale",
                        "future": "future"}[attack]
            if attack == "replay" and self.now - issued > FRESHNESS_S:
                expected = "stale"  # freshness is checked before the nonce
            assert (verdict.accepted, verdict.reason, verdict.command) == (False, expected, None)
            assert self.verifier.nonce_count <= nonces  # old nonces may expire, none is added
            before.check()
            return
        assert verdict.accepted and verdict.command is not None
        self.accepted.append((line, issued))
        self.apply(verdict.command)

    def signed_line(self, slot: str, action: str, blueprint: str,
                    attack: str | None) -> tuple[str, float]:
        """A signed command line for the attack, and its issue time."""
        if attack == "replay":
            return self.accepted[-1]
        issued = {"stale": self.now - 2 * FRESHNESS_S, "future": self.now + 60.0}.get(
            attack or "", self.now)
        seed_id = self.new_seed_id()
        command = LifecycleCommand(action, slot,  # type: ignore[arg-type]
                                   blueprint if action == "germinate" else None, seed_id,
                                   issued, f"nonce-{seed_id}")
        line = sign(command, KEY).to_json()
        if attack == "tamper":  # the same signature on another slot's command
            line = line.replace(f'"{slot}"', '"late"' if slot != "late" else '"mid"')
        return line, issued

    def apply(self, command: LifecycleCommand) -> None:
        """What an external controller does with a verified command (errors change nothing)."""
        slot = command.slot
        if command.action == "germinate":
            self.plant(slot, command.blueprint_id or "", "sigmoid", command.seed_id or "")
        elif command.action == "prune":
            self.prune(slot)
        else:
            self.fossilize(slot, 2.0)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def transitions_follow_the_table(self) -> None:
        """Every record added since the last check chains valid transitions, old to new."""
        for name, state in self.model.slot_states().items():
            seen = self.seen[name]
            added = state.transitions - seen.transitions
            assert added >= 0
            records = state.history[len(state.history) - added:] if added else ()
            stage = seen.stage
            for record in records:
                assert record.from_stage == stage, (record, stage)
                assert is_valid_transition(record.from_stage, record.to_stage), record
                stage = record.to_stage
            assert stage == state.stage
        self.seen = self.model.slot_states()

    @invariant()
    def fossils_are_permanent(self) -> None:
        for name, seed_id in self.fossils.items():
            state = self.model.seed_slots[name].state
            assert (state.stage, state.seed_id) == (SeedStage.FOSSILIZED, seed_id)
        for name, state in self.model.slot_states().items():
            if state.stage == SeedStage.FOSSILIZED:
                self.fossils.setdefault(name, state.seed_id or "")
        fossil_ids = set(self.fossils.values())
        assert not any(e.type == EventType.SEED_PRUNED and e.seed_id in fossil_ids
                       for e in self.events)

    @invariant()
    def modules_match_states(self) -> None:
        for slot in self.model.seed_slots.values():
            assert (slot.seed is not None) == slot.state.has_seed, slot
            assert not slot.state.alpha_overridden

    @invariant()
    def parameters_are_finite(self) -> None:
        assert all(torch.isfinite(p).all() for p in self.model.parameters())


LifecycleMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_lifecycle_fuzz = LifecycleMachine.TestCase
