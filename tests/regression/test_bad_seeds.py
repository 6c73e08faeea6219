"""Issue 10: a bad seed never costs the host (defects 1, 2, 3, 5 and 6).

Each test asserts the values that were wrong at 98a0a54: host parameters,
momenta and BatchNorm buffers bit-identical to a run without the bad seed,
the loss finite step by step, gradients against a reference, stages and
reasons read from events.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.lifecycle import set_alpha
from esper.data import load_task
from esper.kasmina import transition
from esper.leyline import EventType, SeedStage
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.ops.formula import slot_forward, slot_forward_reference
from esper.optim import OptimizerState, SGDConfig
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.inputs import StepInputs
from esper.tolaria.step import train_step
from esper.tolaria.trainer import Trainer
from tests.broken_modules import (
    NaNInputGradientSeed,
    NaNSeed,
    RaisingFactory,
    RaisingSeed,
    ScaledSeed,
    registered,
)

S = SeedStage
IDLE = ControllerConfig(warmup_epochs=100)  # the heuristic never germinates by itself


# --------------------------------------------------------------------------- helpers


def model_with(factory=None, stage: SeedStage = S.TRAINING, alpha: float = 0.5):
    """A CNN host (seeded 0) with ``factory``'s seed in ``mid`` at ``stage``, or none."""
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid"))
    if factory is None:
        return model
    with registered("bad", factory) as name:
        model.germinate_seed(name, "bad-1", slot="mid")
    slot = model.seed_slots["mid"]
    for target in (S.TRAINING, S.BLENDING)[: 1 + (stage is S.BLENDING)]:
        slot.state = transition(slot.state, target)
    if stage is S.BLENDING:
        slot.state = set_alpha(slot.state, alpha)
    return model


class Stepper:
    """Runs train_step on a model with its own optimizer state, one batch at a time."""

    def __init__(self, model: MorphogeneticModel, step=train_step) -> None:
        self.model, self.step = model, step
        self.optimizer = OptimizerState(SGDConfig(lr=0.05, momentum=0.9,
                                                  weight_decay=5e-4)).synced(model)
        # Every seed watched, fossilized or not.
        self.inputs = replace(StepInputs.of(model, self.optimizer), watched=None)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        return self.step(self.model, replace(self.inputs, states=self.model.slot_states()), x, y)

    def host(self) -> dict[str, torch.Tensor]:
        """Every host parameter, buffer and momentum, by name."""
        tensors = {f"param {k}": v for k, v in self.model.host.named_parameters()}
        tensors |= {f"buffer {k}": v for k, v in self.model.host.named_buffers()}
        tensors |= {f"momentum {k}": v for k, v in self.optimizer.buffers["momentum"].items()
                    if k.startswith("host.")}
        return tensors


def batch(i: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), f"{name} differs from the run without the seed"


def compiled_step():
    counter = CompileCounterWithBackend("aot_eager")
    return torch.compile(train_step, fullgraph=True, dynamic=False, backend=counter), counter


# --------------------------------------------------------------------------- defects 1 and 2


@pytest.mark.parametrize("every", [1, 5])
def test_nan_seed_in_training_leaves_the_host_exactly_as_without_it(every):
    """Defects 1 and 2: a seed that emits NaN (always, or one call in five) in TRAINING
    poisoned every BatchNorm after its slot and made every host update skip."""
    bad, clean = Stepper(model_with(lambda c: NaNSeed(c, every))), Stepper(model_with())
    for i in range(10):
        x, y = batch(i)
        got, want = bad(x, y), clean(x, y)
        assert got.loss.isfinite() and torch.equal(got.loss, want.loss), i
        assert got.updated[0] and got.faults.tolist() == [(i + 1) % every == 0]
        assert_identical(bad.host(), clean.host())
    for name, value in bad.model.host.named_buffers():
        assert value.isfinite().all(), name


def test_nan_seed_in_training_compiled_in_one_graph():
    """Defects 1 and 2 under torch.compile: the same values, one graph for the bad run."""
    step, counter = compiled_step()
    bad = Stepper(model_with(NaNSeed), step)
    clean = Stepper(model_with())
    for i in range(4):
        x, y = batch(i)
        got, want = bad(x, y), clean(x, y)
        assert got.loss.isfinite() and got.updated.tolist() == [True, False]
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=1e-6)
    for name, value in clean.host().items():
        torch.testing.assert_close(bad.host()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert counter.frame_count == 1


def test_nan_seed_in_blending_skips_the_step_and_commits_nothing():
    """Defect 1 in BLENDING: the blended NaN makes the loss NaN; the step commits no
    parameter, momentum or statistic (the trainer then mutes the seed)."""
    bad = Stepper(model_with(NaNSeed, S.BLENDING, alpha=0.5))
    bad(*batch(0))
    before = {k: v.clone() for k, v in bad.host().items()}
    result = bad(*batch(1))
    assert not result.loss.isfinite()
    assert result.updated.tolist() == [False, False] and result.faults.tolist() == [True]
    assert_identical(bad.host(), before)


def test_blend_selects_the_host_where_alpha_is_zero():
    """Defect 2 at the formula: lerp(host, NaN, 0) is NaN; the slot's output is the host."""
    model = model_with(NaNSeed)
    slot = model.seed_slots["mid"]
    host = torch.randn(4, 8, 16, 16, requires_grad=True)
    per_sample = torch.tensor([0.0, 0.3, 0.0, 1.0]).view(4, 1, 1, 1)
    for forward in (slot_forward, slot_forward_reference):
        out = forward(slot.state, slot.seed, host)
        assert torch.equal(out, host), forward.__name__
        (grad,) = torch.autograd.grad(out.sum(), host)
        assert torch.equal(grad, torch.ones_like(host)), forward.__name__
        mixed = forward(slot.state, slot.seed, host, alpha=per_sample)
        assert torch.equal(mixed[0::2], host[0::2]), forward.__name__  # alpha 0: the host
        assert mixed[1::2].isnan().all(), forward.__name__  # blended: the seed's NaN


def test_a_non_finite_batch_never_reaches_the_running_statistics():
    """Defect 1 from the host side: one NaN pixel or a 1e38 input poisoned all six
    host BatchNorm buffers; now the step commits no buffer and no parameter."""
    stepper = Stepper(model_with(NaNSeed))
    stepper(*batch(0))
    before = {k: v.clone() for k, v in stepper.host().items()}
    x, y = batch(1)
    nan_pixel = x.clone()
    nan_pixel[3, 1, 7, 9] = float("nan")
    for bad_input in (nan_pixel, x * 1e38):
        result = stepper(bad_input, y)
        assert result.updated.tolist() == [False, False]
        assert result.faults.tolist() == [False]  # the host's NaN is not the seed's
        assert_identical(stepper.host(), before)
    running = [k for k in before if k.startswith("buffer") and "running" in k]
    assert len(running) == 6  # three BatchNorms' means and variances


# --------------------------------------------------------------------------- defect 3


@pytest.mark.parametrize("stage", [S.TRAINING, S.BLENDING])
def test_nan_seed_input_gradient_never_reaches_the_host(stage):
    """Defect 3: grad * (1 - g) with g = 1 is NaN * 0 = NaN; the isolation now selects."""
    bad = Stepper(model_with(NaNInputGradientSeed, stage, alpha=0.3))
    clean = Stepper(model_with())
    for i in range(3):
        x, y = batch(i)
        got = bad(x, y)
        assert got.updated[0] and got.loss.isfinite()
        if stage is S.TRAINING:
            clean(x, y)
            assert_identical(bad.host(), clean.host())
    for name, value in bad.host().items():
        assert value.isfinite().all(), name


def test_isolated_slot_sends_the_host_only_the_direct_path_gradient():
    """Defect 3 at the formula, both implementations: d out / d host = 1 - a exactly."""
    model = model_with(NaNInputGradientSeed, S.BLENDING, alpha=0.25)
    slot = model.seed_slots["mid"]
    host = torch.randn(2, 8, 16, 16, requires_grad=True)
    for forward in (slot_forward, slot_forward_reference):
        (grad,) = torch.autograd.grad(forward(slot.state, slot.seed, host).sum(), host)
        assert torch.equal(grad, torch.full_like(host, 0.75)), forward.__name__


# --------------------------------------------------------------------------- trainer level


def trainer(tmp_path: Path, **kw) -> Trainer:
    config = GrowConfig(**{"epochs": 4, "out": tmp_path, "limit": 160, "compile": False,
                           "batch_size": 16,
                           "quiet": True, "controller": IDLE, "max_seeds": 1,
                           "slots": ("mid",), **kw})
    events: list[dict] = []
    t = Trainer(config, load_task("digits", limit=config.limit), sink=events.append)
    t.events = events  # type: ignore[attr-defined]
    return t


def plant(t: Trainer, factory, stage: SeedStage = S.TRAINING, alpha: float = 0.5) -> None:
    with registered("bad", factory) as name:
        t.model.germinate_seed(name, "bad-1", slot="mid")
    slot = t.model.seed_slots["mid"]
    for target in (S.TRAINING, S.BLENDING)[: 1 + (stage is S.BLENDING)]:
        slot.state = transition(slot.state, target)
    if stage is S.BLENDING:
        slot.state = set_alpha(slot.state, alpha)
    t.optimizer = t.optimizer.synced(t.model)


def events_of(t: Trainer, kind: EventType) -> list[dict]:
    return [e for e in t.events if e.get("type") == kind.value]


def test_trainer_epoch_with_a_nan_seed_equals_the_epoch_without_it(tmp_path):
    """Defects 1 and 2 end to end: 0 host steps lost, statistics and accuracy identical,
    the seed pruned at the epoch's end (reason non_finite)."""
    bad, clean = trainer(tmp_path / "bad"), trainer(tmp_path / "clean")
    plant(bad, lambda c: NaNSeed(c, every=5))
    bad_record, clean_record = bad.run_epoch(), clean.run_epoch()
    host = dict(bad.model.host.state_dict())
    for name, value in clean.model.host.state_dict().items():
        assert torch.equal(host[name], value), name
    assert bad_record.val_accuracy == clean_record.val_accuracy
    assert bad_record.train_loss == clean_record.train_loss
    skipped = [e["skipped_updates"] for e in bad.events if e["kind"] == "safety"]
    assert skipped and "host" not in skipped[0] and skipped[0]["mid"] > 0
    pruned = events_of(bad, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["non_finite"]


def test_trainer_nan_seed_in_blending_costs_one_host_step(tmp_path):
    """Defects 1 and 2 in BLENDING: 15 of 15 host updates were skipped; now the step
    that saw the NaN is skipped and the seed is muted from the next step on."""
    t = trainer(tmp_path)
    plant(t, NaNSeed, S.BLENDING, alpha=0.5)
    t.run_epoch()
    skipped = [e["skipped_updates"] for e in t.events if e["kind"] == "safety"]
    assert skipped[0]["host"] == 1
    pruned = events_of(t, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["non_finite"]
    for name, value in t.model.host.state_dict().items():
        assert value.isfinite().all(), name


def test_trainer_blowup_in_blending_is_skipped_muted_and_pruned(tmp_path):
    """Defect 5 in the step: a x1e4 seed blended at 0.3 wrecked the host (85.8% -> 10%)."""
    bad, clean = trainer(tmp_path / "bad", limit=600), trainer(tmp_path / "clean", limit=600)
    plant(bad, ScaledSeed, S.BLENDING, alpha=0.3)
    bad.run_epoch(), clean.run_epoch()
    bad_record, clean_record = bad.run_epoch(), clean.run_epoch()
    skipped = [e["skipped_updates"] for e in bad.events if e["kind"] == "safety"]
    assert skipped[0]["host"] == 1  # the step that saw the blow-up; muted from then on
    changed = events_of(bad, EventType.BREAKER_CHANGED)
    assert changed[0]["payload"]["reason"] == "blowup"
    pruned = events_of(bad, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["blowup"]
    # One host step of 74 lost, early in training (a few points at epoch 2); before the
    # fix accuracy fell to 10% for good.
    assert bad_record.val_accuracy >= max(50.0, clean_record.val_accuracy - 10.0)
    for name, value in bad.model.host.state_dict().items():
        assert value.isfinite().all(), name


def test_g2_refuses_an_exploding_seed_on_its_own_evidence(tmp_path):
    """Defect 5 at the gate: the probe at alpha 0.1 raises the loss, so G2 fails."""
    t = trainer(tmp_path)
    plant(t, ScaledSeed)
    for _ in range(3):
        t.run_epoch()
    state = t.model.seed_slots["mid"].state
    assert state.stage is S.TRAINING
    assert state.metrics.probe_loss_reduction < -1.0
    gates = [e["payload"] for e in events_of(t, EventType.SEED_GATE_EVALUATED)
             if e["payload"]["gate"] == "G2"]
    assert gates and all("probe_loss_rose" in g["checks_failed"] for g in gates)


def test_blended_loss_blowup_against_the_host_alone_prunes_at_the_epoch_end(tmp_path):
    """Defect 5 at validation: a blended seed that more than doubles the validation loss
    against its host-alone counterfactual is pruned before any gate or controller reads it."""
    t = trainer(tmp_path)
    t.run_epoch()
    plant(t, ScaledSeed, S.BLENDING, alpha=0.5)
    record = t.end_epoch(0.0, None, 0.0)
    pruned = events_of(t, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["blowup"]
    assert "times the host-alone loss" in pruned[0]["payload"]["detail"]
    assert t.model.seed_slots["mid"].state.stage is S.EMBARGOED
    assert record.val_accuracy == t.records[0].val_accuracy  # measured without the seed


# --------------------------------------------------------------------------- defect 6


@pytest.mark.parametrize("compiled", [False, True])
def test_seed_raising_in_the_step_is_pruned_and_the_host_continues(tmp_path, compiled):
    """Defect 6: a seed raising after 20 calls ended `esper grow` with a traceback."""
    t = trainer(tmp_path, compile=compiled, compile_backend="aot_eager")
    plant(t, lambda c: RaisingSeed(c, after=3))
    host = {k: v.clone() for k, v in t.model.host.state_dict().items()}
    t.run_epoch()
    steps = len(t.data.train[1]) // t.config.batch_size
    assert t.global_step == steps  # every batch trained the host, the failing one too
    assert any(not torch.equal(v, host[k]) for k, v in t.model.host.state_dict().items())
    pruned = events_of(t, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["exception"]
    assert pruned[0]["payload"]["detail"] == "SeedFailure: seed exploded on call 3"
    t.run_epoch()  # and the run goes on
    assert t.epoch == 2 and t.model.seed_slots["mid"].seed is None


def test_seed_raising_in_validation_is_pruned_and_validation_runs_again(tmp_path):
    """Defect 6 in the counterfactual and probe passes (the seed runs in eval mode)."""
    t = trainer(tmp_path)
    plant(t, lambda c: RaisingSeed(c, after=10**9, in_eval=True), S.BLENDING, alpha=0.5)
    record = t.run_epoch()
    pruned = events_of(t, EventType.SEED_PRUNED)
    assert [p["payload"]["reason"] for p in pruned] == ["exception"]
    assert "seed exploded in eval" in pruned[0]["payload"]["detail"]
    assert 0.0 < record.val_accuracy <= 100.0


def test_seed_raising_at_germination_is_refused_and_the_run_goes_on(tmp_path):
    """Defect 6 at germination: the heuristic controller's run crashed at epoch 3."""
    with registered("unbuildable", RaisingFactory()):
        t = trainer(tmp_path, controller=ControllerConfig(warmup_epochs=0, plateau_patience=1,
                                                           plateau_delta=100.0),
                    blueprints=("unbuildable",))
        for _ in range(3):
            t.run_epoch()
    decisions = [e for e in t.events if e["kind"] == "decision"]
    assert decisions and all(d["outcome"].startswith("failed: blueprint 'unbuildable' raised")
                             for d in decisions)
    assert "SeedFailure: cannot build a seed of" in decisions[0]["outcome"]
    assert t.model.seed_slots["mid"].state.stage is S.DORMANT and t.epoch == 3


def test_an_error_no_seed_raised_is_not_swallowed(tmp_path):
    t = trainer(tmp_path)
    plant(t, NaNSeed)

    def broken(*args, **kwargs):
        raise KeyError("the host's own bug")

    t.model.host.run_head = broken
    with pytest.raises(KeyError, match="the host's own bug"):
        t.run_epoch()
