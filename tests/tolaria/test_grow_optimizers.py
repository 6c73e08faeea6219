"""``esper grow``'s optimizer, schedule, precision and device: what they train and refuse."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from esper.data import load_task
from esper.errors import DeviceUnavailableError, PrecisionUnsupportedError, ResumeConflictError
from esper.optim import AdamWConfig, SGDConfig, lr_factor
from esper.tolaria import hardware
from esper.tolaria.config import GrowConfig
from esper.tolaria.run import grow
from esper.tolaria.step import train_step
from esper.tolaria.topology_run import TopologyRun
from esper.tolaria.trainer import Trainer
from tests.tolaria.test_tolaria_grow import tiny


def trainer(tmp_path: Path, **changes) -> Trainer:
    config = tiny(tmp_path / "run", 2, **changes)
    return Trainer(config, load_task(config.task, limit=config.limit, seed=config.seed))


def test_adamw_cosine_bf16_trains_every_group_with_decay_on_matrices_only(tmp_path):
    t = trainer(tmp_path, optimizer="adamw", schedule="cosine", precision="bf16", lr=3e-3,
                seed_lr=1e-3, warmup_steps=2)
    assert isinstance(t.optimizer.config, AdamWConfig)
    assert (t.optimizer.config.lr, t.optimizer.config.seed_lr) == (3e-3, 1e-3)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.run_epoch()
    steps = t.global_step
    assert steps == t.steps_per_epoch
    counts = {float(c) for c in t.optimizer.buffers["step"].values()}
    assert counts == {float(steps)}  # every host parameter took every step
    assert all(not torch.equal(p, before[n]) for n, p in t.model.named_parameters())
    inputs = TopologyRun.start(t.model, t.optimizer).inputs
    norms = [n for n, p in t.model.named_parameters() if p.dim() < 2]
    assert norms and not set(norms) & inputs.decayed
    assert inputs.decayed == {n for n, p in t.model.named_parameters() if p.dim() >= 2}


def test_schedule_warms_up_then_follows_the_cosine_to_zero():
    assert [lr_factor("constant", s, 10, warmup=3) for s in range(5)] == [0.25, 0.5, 0.75, 1, 1]
    cosine = [lr_factor("cosine", s, 10, warmup=2) for s in range(2, 11)]
    assert cosine[0] == 1.0 and cosine[4] == pytest.approx(0.5) and cosine[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(cosine))
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'.*'constant', 'cosine'"):
        lr_factor("linear", 0, 10)


def test_the_trainer_feeds_the_schedule_into_each_step(tmp_path, monkeypatch):
    t = trainer(tmp_path, schedule="cosine", lr=0.04)
    seen = []
    real = TopologyRun.schedule
    monkeypatch.setattr(TopologyRun, "schedule",
                        lambda run, scale: (seen.append(scale), real(run, scale))[1])
    t.run_epoch()
    total = 2 * t.steps_per_epoch
    assert seen == [lr_factor("cosine", s, total) for s in range(t.steps_per_epoch)]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_one_graph_whatever_the_learning_rate(tmp_path, optimizer):
    """The schedule and the breaker's denial change tensor values only: no recompile."""
    t = trainer(tmp_path, optimizer=optimizer, precision="bf16")
    t.model.germinate_seed("conv_light", "s1", slot="mid")
    t.optimizer = t.optimizer.synced(t.model)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(train_step, fullgraph=True, dynamic=False, backend=counter)
    run = TopologyRun.start(t.model, t.optimizer)
    x, y = t.data.train[0][:16], t.data.train[1][:16]
    options = t.runner.options(measure=True)
    for scale in (1.0, 0.5, 0.25):
        run.schedule(scale)
        step(t.model, run.step_inputs(), x, y, options)
    run.deny("mid")
    step(t.model, run.step_inputs(), x, y, options)
    assert counter.frame_count == 1


def seeded(tmp_path: Path, name: str) -> Trainer:
    t = trainer(tmp_path / name)
    torch.manual_seed(1)
    t.model.germinate_seed("conv_light", "s1", slot="mid")
    t.optimizer = t.optimizer.synced(t.model)
    return t


def test_one_process_runs_sgd_then_adamw_then_sgd_compiled(tmp_path):
    """Each trainer compiles its own graph of the same step function; the cached graph of
    another optimizer is guarded out, not reused and not a crash."""
    for name in ("sgd", "adamw", "sgd"):
        t = trainer(tmp_path / name, optimizer=name, compile=True, compile_backend="eager",
                    max_seeds=0)
        t.run_epoch()
        assert t.counter.graphs == 1 and t.optimizer.config.name == name


def test_loss_scale_halves_on_overflow_and_skips_every_group_without_blame(tmp_path):
    t, plain = seeded(tmp_path, "scaled"), seeded(tmp_path, "plain")
    scale = torch.tensor([3e38, 5.0])
    run = TopologyRun.start(t.model, t.optimizer, scale)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    x, y = t.data.train[0][:16], t.data.train[1][:16]
    loud = x * 1e4  # first-layer gradients of ~1e4: times the scale, beyond float32
    result = train_step(t.model, run.step_inputs(), loud, y, t.runner.options(measure=True))
    assert result.loss.isfinite()
    assert not result.updated.any() and not result.faults.any()
    assert scale.tolist() == [pytest.approx(1.5e38), 0.0]
    assert all(torch.equal(p, before[n]) for n, p in t.model.named_parameters())
    scale.copy_(torch.tensor([1024.0, 0.0]))
    result = train_step(t.model, run.step_inputs(), x, y, t.runner.options(measure=True))
    assert result.updated.all() and scale.tolist() == [1024.0, 1.0]
    # A power-of-two scale is exact: the same update as the step without one.
    train_step(plain.model, TopologyRun.start(plain.model, plain.optimizer).step_inputs(), x, y,
               plain.runner.options(measure=True))
    theirs = dict(plain.model.named_parameters())
    moved = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("host.") for n in moved) and any(".seed." in n for n in moved)
    for name, p in t.model.named_parameters():
        torch.testing.assert_close(p, theirs[name], rtol=1e-6, atol=1e-7)


def test_bad_optimizer_schedule_precision_and_device_are_refused(tmp_path, monkeypatch):
    for name, value in (("optimizer", "adam"), ("schedule", "step"), ("precision", "fp8"),
                        ("device", "tpu")):
        with pytest.raises(ValueError, match=f"unknown {name} '{value}'; known"):
            GrowConfig(**{name: value})
    with pytest.raises(PrecisionUnsupportedError, match="fp16 needs a CUDA device"):
        hardware.autocast_dtype("fp16", torch.device("cpu"))
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    with pytest.raises(PrecisionUnsupportedError, match="this CPU has no bfloat16 support"):
        hardware.autocast_dtype("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"CUDA is not available.*available: cpu"):
        hardware.resolve_device("cuda")
    assert hardware.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError):  # before the run directory is touched
        grow(tiny(tmp_path / "never", 1, device="cuda"))
    assert not (tmp_path / "never").exists()


def test_a_resume_with_another_optimizer_names_both(tmp_path):
    out = tmp_path / "run"
    grow(tiny(out, 2, optimizer="adamw", stop_after=1))
    with pytest.raises(ResumeConflictError, match="--optimizer sgd conflicts with the run's "
                                                  "--optimizer adamw"):
        grow(tiny(out, 2, optimizer="sgd"), resume=out)
    summary = grow(tiny(out, 2, optimizer="adamw"), resume=out)
    assert summary.epochs == 2
    assert summary.training == {"device": "cpu", "precision": "fp32", "optimizer": "adamw",
                                "schedule": "constant", "step": "eager"}


def test_default_optimizer_is_sgd_at_the_run_rate():
    config = GrowConfig()
    assert (config.optimizer, config.lr, config.schedule, config.precision, config.device) == (
        "sgd", None, "constant", "fp32", "auto")
    assert SGDConfig().lr == 0.05
