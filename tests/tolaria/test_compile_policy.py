"""When the training step compiles: ``--compile auto|always|never`` and auto's choice by pace."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from esper.leyline.constants import AUTO_COMPILE_MIN_EAGER_SECONDS, AUTO_COMPILE_TIMED_STEPS
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig
from esper.tolaria.compile_policy import (
    StepClock,
    choose_by_pace,
    choose_up_front,
    device_clock,
    slower_than_eager,
)
from esper.tolaria.run import grow
from esper.tolaria.step_runner import StepRunner
from esper.tolaria.topology_run import TopologyRun
from tests.tolaria.test_tolaria_grow import tiny

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_modes_that_need_no_measurement() -> None:
    assert choose_up_front("always").compile is True
    assert choose_up_front("never").compile is False
    assert choose_up_front("auto") is None  # every device times its steps first
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        choose_up_front("fast")


def test_the_clock_waits_for_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    assert device_clock(CPU) is time.perf_counter
    before = time.perf_counter()
    assert device_clock(CUDA)() >= before and waited == [CUDA]


def test_auto_compiles_from_the_threshold_of_projected_eager_seconds() -> None:
    steps = 40_000
    at = AUTO_COMPILE_MIN_EAGER_SECONDS / steps
    assert choose_by_pace(at, steps).compile is True
    below = choose_by_pace(at * 0.99, steps)
    assert below.compile is False
    assert f"about {at * 0.99 * steps:.0f} s of steps left" in below.reason
    assert "--compile always" in below.reason
    assert choose_by_pace(1.0, 0).compile is False  # nothing left to save
    assert slower_than_eager(0.002, 0.001).compile is False
    assert choose_by_pace(0.5, 10, threshold=5.0).compile is True


def test_the_clock_skips_the_first_step_and_takes_the_median() -> None:
    clock = StepClock(timed=3)
    with pytest.raises(ValueError, match="no eager step"):
        _ = clock.pace
    for seconds in (9.0, 0.2, 5.0, 0.1, 7.0):  # 9.0 is the untimed first; 7.0 comes too late
        clock.add(seconds)
    assert clock.ready and clock.seconds == [0.2, 5.0, 0.1] and clock.pace == 0.2


class FakeClock:
    """A clock that moves ``increment`` seconds at each read: a step (two reads) lasts it."""

    def __init__(self, increment: float) -> None:
        self.increment, self.now = increment, 0.0

    def __call__(self) -> float:
        self.now += self.increment
        return self.now


class Steps:
    """Steps of one CNN with a norm seed through ``runner``."""

    def __init__(self, runner: StepRunner) -> None:
        torch.manual_seed(0)
        self.runner = runner
        self.model = MorphogeneticModel(CNNHost(base_channels=4), slots=("mid",))
        self.model.germinate_seed("norm", "s", slot="mid")
        self.run = TopologyRun.start(self.model,
                                     OptimizerState(SGDConfig(lr=0.01)).synced(self.model))
        self.x, self.y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))

    def __call__(self, count: int, steps_left: int) -> None:
        def prune(slot: str, error: BaseException) -> None:
            raise error

        for i in range(count):
            result = self.runner.run(self.model, self.run, self.x, self.y, measure=False,
                                     lr_scale=1.0, prune=prune, steps_left=steps_left - i)
            assert result is not None and bool(result.updated.all())


@pytest.mark.parametrize(("pace", "compiles"), [(0.01, False), (1.0, True)])
def test_auto_on_a_cpu_times_eager_steps_then_chooses(pace: float, compiles: bool) -> None:
    notices: list[str] = []
    runner = StepRunner("auto", "eager", None, None, CPU, notify=notices.append,
                        clock=FakeClock(pace))
    steps = Steps(runner)
    assert runner.choice is None and not runner.compiling
    steps_left = 1000  # 10 s eagerly at 0.01 s a step; 1000 s at 1 s
    steps(AUTO_COMPILE_TIMED_STEPS + 1, steps_left)
    assert runner.counter.graphs == 0  # every timed step ran eagerly
    assert runner.choice is not None and runner.compiling is compiles
    assert notices == [f"the training step {'compiles' if compiles else 'runs eagerly'} "
                       f"({runner.choice.reason})"]
    projected = pace * (steps_left - AUTO_COMPILE_TIMED_STEPS - 1)
    assert f"about {projected:.0f} s" in runner.why()
    steps(2, steps_left - AUTO_COMPILE_TIMED_STEPS - 1)
    assert runner.counter.graphs == (1 if compiles else 0)


def test_the_ranks_choose_from_their_shared_pace() -> None:
    shared: list[float] = []

    def share(seconds: float) -> float:
        shared.append(seconds)
        return 1.0  # another rank is slow: the mean says compile

    runner = StepRunner("auto", "eager", None, None, CPU, share=share, clock=FakeClock(0.01))
    steps = Steps(runner)
    steps(AUTO_COMPILE_TIMED_STEPS + 1, 1000)
    assert shared == [pytest.approx(0.01)] and runner.compiling


@pytest.mark.parametrize(("compiled_pace", "stays"), [(0.5, True), (1.0, False)])
def test_auto_goes_back_to_eager_when_compiled_steps_are_not_faster(
        compiled_pace: float, stays: bool) -> None:
    clock, notices = FakeClock(1.0), []
    runner = StepRunner("auto", "eager", None, None, CPU, notify=notices.append, clock=clock)
    steps = Steps(runner)
    steps(AUTO_COMPILE_TIMED_STEPS + 1, 10_000)
    assert runner.compiling
    clock.increment = compiled_pace
    # the step that compiles, the clock's untimed first, then the timed ones
    steps(AUTO_COMPILE_TIMED_STEPS + 2, 10_000)
    assert runner.compiling is stays and runner.counter.graphs == 1
    if stays:
        assert len(notices) == 3  # the choice, compiling..., compiled in
    else:
        assert notices[-1] == f"the training step runs eagerly again ({runner.why()})"
        assert runner.why() == "auto: compiled steps took 1000.00 ms, eager 1000.00 ms: " \
                               "back to eager"
    steps(3, 10_000)  # judged once: no more timing, no more graphs
    assert runner.compiling is stays and runner.counter.graphs == 1


@pytest.mark.parametrize(("mode", "graphs"), [("always", 1), ("never", 0)])
def test_always_and_never_do_not_time_anything(mode: str, graphs: int) -> None:
    def no_clock() -> float:
        raise AssertionError("only auto reads the clock")

    runner = StepRunner(mode, "eager", None, None, CPU, clock=no_clock)
    steps = Steps(runner)
    steps(2, 2)
    assert runner.counter.graphs == graphs and runner.why() == f"--compile {mode}"


def test_a_run_that_ends_before_choosing_says_so() -> None:
    runner = StepRunner("auto", "eager", None, None, CPU)
    steps = Steps(runner)
    steps(2, 2)
    assert runner.choice is None and runner.counter.graphs == 0
    assert "ended before enough eager steps were timed" in runner.why()


def test_a_long_run_under_auto_compiles_after_timing_and_says_why(tmp_path: Path) -> None:
    """The trainer's wiring: the steps the run has left reach the runner (100,000 epochs of
    a dozen steps project far past the threshold; the same run in one epoch does not)."""
    config = tiny(tmp_path / "run", 100_000, compile="auto", compile_backend="eager",
                  batch_size=8, stop_after=1)
    summary = grow(config)
    assert summary.training["step"] == "compiled"
    assert summary.compile_choice.startswith("auto: about ")
    assert summary.compile_count == 1  # no seed in epoch 1: one topology
    short = grow(replace(config, out=tmp_path / "short", epochs=1, stop_after=None))
    assert short.training["step"] == "eager" and short.compile_count == 0
    assert "compiling pays only past" in short.compile_choice
