"""What gradient telemetry costs a training step, at the default stride.

Run the table with::

    pytest bench/test_telemetry.py --benchmark-enable -s
    ESPER_BENCH_COMPILE=1 pytest bench/test_telemetry.py --benchmark-enable -s

Target (issue): telemetry at the default stride costs at most 2% of a step.
Telemetry is two things (see ``esper/tolaria/trainer.py``):

* the squared gradient norm of each group and the host features at each
  seeded slot for the probe's samples, computed inside the step
  (``train_step(measure=True)``); their cost is the step with them minus the
  step without (``measure=False, feature_samples=0``). Compiled, every step
  pays it (a flag would make two graphs); eagerly the trainer measures only
  on the steps that use the norms, one in ``stride``;
* every ``stride`` steps, the stride work: a ``GradientEMA`` update (device
  ops, no sync) and ``model.probe_isolation`` on the host features of 8
  samples that the step returns (its arithmetic compiled like the step, as
  the trainer does), timed directly and divided by the stride.

``overhead = (measured + stride_work / stride) / step_without`` with
``measured = step_with - step_without``, divided by ``stride`` when eager.

Models: ``digits``, the CNN that ``esper grow`` trains on digits
(``CNNHost(10, in_channels=1, base_channels=4)``, 1x16x16 inputs), and
``reference``, the issue-3 configuration (default ``CNNHost``, 3x32x32); both
with slots ``early``/``mid``/``late``, a ``norm`` seed in ``mid`` in TRAINING,
batch 64, the trainer's SGD. Modes: ``eager`` (``torch.func``) and
``compiled`` (inductor, ``fullgraph=True``; one graph per ``measure``, built
and warmed up before timing; skipped unless ``ESPER_BENCH_COMPILE=1``).

pytest-benchmark times the step with norms. The ``setup`` of every round runs,
timed with ``time.perf_counter``: the stride work (EMA update, then probe), the
norm op alone on gradient-shaped tensors (eager, for reference), an untimed
step without norms (so both timed steps follow a step), then the step without
norms. Step and part times are medians over rounds; percentages are ratios
of those medians. The median of the per-round differences is printed beside
(``paired``): on this 2-core machine the two disagree by up to 8 points for
the 80 ms reference step (bimodal rounds), while the medians agree with a
round-robin of the four step variants (norms and features on or off), so the
verdict uses the medians. All of it is in ``extra_info`` and in the table
printed at the end (``-s``); PASS/MISS is printed, nothing asserted. On a
shared machine, run it when it is otherwise idle: two threads next to another
busy process make every step several times slower and the ratios meaningless.
About 3 minutes with a cold inductor cache, 1.5 warm, here.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from esper import kernels
from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.leyline.constants import DEFAULT_TELEMETRY_STRIDE
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.ops.telemetry import GradientEMA
from esper.optim import OptimizerState, SGDConfig
from esper.tolaria.compiled import CompileCounter, build_probe
from esper.tolaria.inputs import StepInputs, StepOptions
from esper.tolaria.step import StepResult, train_step
from esper.tolaria.topology_run import TopologyRun

torch.set_num_threads(2)

BATCH = 64
SLOTS = ("early", "mid", "late")
SEED_SLOT = "mid"
PROBE_SAMPLES = 8
STRIDE = DEFAULT_TELEMETRY_STRIDE
TARGET_PERCENT = 2.0
COMPILE = os.environ.get("ESPER_BENCH_COMPILE") == "1"
MODES = ("eager", "compiled")


@dataclass(frozen=True)
class ModelConfig:
    """A host's constructor arguments, the shape of one input and how many rounds to time."""

    host: dict[str, Any]
    input_shape: tuple[int, int, int]
    rounds: int
    warmup_rounds: int = 3


CONFIGS = {
    "digits": ModelConfig({"num_classes": 10, "in_channels": 1, "base_channels": 4},
                          (1, 16, 16), rounds=150),
    "reference": ModelConfig({}, (3, 32, 32), rounds=40),
}


# --------------------------------------------------------------------------- the trainer's parts


# Two functions, so each compiled variant has its own dynamo cache (one entry,
# as in the trainer) instead of one cache whose lookup tries both.
def _step_with_norms(model: MorphogeneticModel, inputs: StepInputs, x: Tensor,
                     y: Tensor) -> StepResult:
    return train_step(model, inputs, x, y, StepOptions(measure=True))


def _step_without_norms(model: MorphogeneticModel, inputs: StepInputs, x: Tensor,
                        y: Tensor) -> StepResult:
    return train_step(model, inputs, x, y, StepOptions(measure=False, feature_samples=0))


Step = Any  # one of the two functions above, or its compiled version


def _steps(compile: bool, counter: CompileCounter) -> dict[bool, Step]:
    """``measure`` -> the step: eager, or compiled as ``build_step`` compiles it."""
    steps: dict[bool, Step] = {True: _step_with_norms, False: _step_without_norms}
    if not compile:
        return steps
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return {measure: torch.compile(fn, fullgraph=True, backend=counter)
            for measure, fn in steps.items()}


class TelemetryBench:
    """A seeded model with the trainer's optimizer state, step and stride work."""

    def __init__(self, config: ModelConfig, compile: bool) -> None:
        torch.manual_seed(0)
        model = MorphogeneticModel(CNNHost(**config.host), slots=SLOTS)
        model.germinate_seed("norm", "bench", slot=SEED_SLOT)
        slot = model.seed_slots[SEED_SLOT]
        slot.state = transition(slot.state, SeedStage.TRAINING)
        model.train()
        self.model = model
        self.optimizer = OptimizerState(SGDConfig()).synced(model)
        self.run = TopologyRun.start(model, self.optimizer)  # the trainer's inputs and counters
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(BATCH, *config.input_shape, generator=generator)
        self.y = torch.randint(0, 10, (BATCH,), generator=generator)
        self.probe_generator = torch.Generator().manual_seed(7)
        self.counter = CompileCounter()
        self._steps = _steps(compile, self.counter)
        self.ema: GradientEMA | None = None
        self.step(True)  # compiles the graph with norms, where it compiles
        assert self.squared.shape == (1 + len(self.run.names),)
        assert self.step(False).numel() == 0  # and the one without
        self.probe_squares = build_probe(compile, self.counter)
        self.probe()  # compiles the probe's graph, where it compiles

    def step(self, measure: bool) -> Tensor:
        """One training step; returns the squared group norms (empty without ``measure``)."""
        result = self._steps[measure](self.model, self.run.step_inputs(), self.x, self.y)
        if measure:
            self.result = result
            self.squared, self.features = result.squared, result.features
        return result.squared

    def update_ema(self) -> None:
        """Fold the last step's norms into the moving average, as the trainer does."""
        sample = self.run.capture(self.result)
        self.ema = GradientEMA.start(sample) if self.ema is None else self.ema.update(sample)

    def probe(self) -> None:
        """The isolation probe on the features the last step returned, as the trainer runs it."""
        self.model.probe_isolation(features=self.features, samples=PROBE_SAMPLES,
                                   generator=self.probe_generator, squares=self.probe_squares)
        self.run.refresh(self.model.slot_states())

    def norms_alone(self) -> Tensor:
        """The norm op by itself, eager, on tensors shaped like the gradients (the momenta)."""
        momenta = self.optimizer.buffers["momentum"]
        return kernels.group_squared_norms([[momenta[n] for n in g]
                                            for g in self.run.inputs.groups])


# --------------------------------------------------------------------------- report


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_ratio(parts: list[float], reference: list[float]) -> float:
    return statistics.median(p / r for p, r in zip(parts, reference, strict=True))


@dataclass
class Rounds:
    """Per-round seconds of each timed part."""

    without: list[float] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)

    def skip(self, count: int) -> Rounds:
        return Rounds(*(getattr(self, k)[count:] for k in ("without", "ema", "probe", "norms")))


@dataclass(frozen=True)
class Result:
    """One (model, mode)'s figures; percentages are of the step without norms."""

    with_ms: float
    without_ms: float
    ema_ms: float
    probe_ms: float
    norms_ms: float
    in_graph_pct: float
    paired_pct: float
    stride_pct: float
    graphs: int

    @property
    def overhead_pct(self) -> float:
        return self.in_graph_pct + self.stride_pct

    @property
    def verdict(self) -> str:
        return "PASS" if self.overhead_pct <= TARGET_PERCENT else "MISS"

    @classmethod
    def of(cls, with_norms: list[float], rounds: Rounds, graphs: int,
           every_step: bool) -> Result:
        stride_work = [e + p for e, p in zip(rounds.ema, rounds.probe, strict=True)]
        ms = {k: statistics.median(v) * 1e3 for k, v in vars(rounds).items()}
        delta = [w - wo for w, wo in zip(with_norms, rounds.without, strict=True)]
        share = 1 if every_step else STRIDE  # eagerly only one step in `stride` measures
        with_ms = statistics.median(with_norms) * 1e3
        return cls(
            with_ms=with_ms, without_ms=ms["without"],
            ema_ms=ms["ema"], probe_ms=ms["probe"], norms_ms=ms["norms"],
            in_graph_pct=100 * (with_ms / ms["without"] - 1) / share,
            paired_pct=100 * _median_ratio(delta, rounds.without) / share,
            stride_pct=100 * statistics.median(stride_work) * 1e3 / ms["without"] / STRIDE,
            graphs=graphs)


RESULTS: dict[tuple[str, str], Result] = {}


def _table() -> str:
    header = (f"{'model':10}{'mode':9}{'without':>9}{'with':>9}{'norm op':>9}{'EMA':>8}"
              f"{'probe':>8}{'in-graph':>10}{'paired':>8}{'stride':>8}{'overhead':>10}"
              f"{'target':>8}")
    units = (f"{'':19}{'ms':>9}{'ms':>9}{'ms':>9}{'ms':>8}{'ms':>8}"
             f"{'%':>10}{'%':>8}{'%':>8}{'%':>10}{'%':>8}")
    lines = [header, units]
    for (model, mode), r in RESULTS.items():
        lines.append(
            f"{model:10}{mode:9}{r.without_ms:9.2f}{r.with_ms:9.2f}{r.norms_ms:9.3f}"
            f"{r.ema_ms:8.3f}{r.probe_ms:8.2f}{r.in_graph_pct:10.2f}{r.paired_pct:8.2f}"
            f"{r.stride_pct:8.2f}"
            f"{r.overhead_pct:10.2f}{TARGET_PERCENT:8.1f}  {r.verdict}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def report() -> Iterator[None]:
    yield
    if RESULTS:
        print(f"\n\nTelemetry cost per training step, stride {STRIDE}, batch {BATCH}, "
              f"{torch.get_num_threads()} threads; step times are medians over rounds, "
              f"percentages ratios of medians to the step without norms (paired: median of "
              f"per-round differences)\n"
              f"in-graph = (with - without) / without (/ stride when eager); "
              f"stride = (EMA + probe) / stride / without; overhead = in-graph + stride\n"
              + _table())


# --------------------------------------------------------------------------- benchmark


@pytest.mark.parametrize("name", tuple(CONFIGS))
@pytest.mark.parametrize("mode", MODES)
def test_telemetry_overhead(benchmark, report: None, mode: str, name: str) -> None:
    if mode == "compiled" and not COMPILE:
        pytest.skip("inductor compiles take minutes: set ESPER_BENCH_COMPILE=1")
    config = CONFIGS[name]
    started = time.perf_counter()
    bench = TelemetryBench(config, compile=mode == "compiled")
    build_s = time.perf_counter() - started
    rounds = Rounds()

    def setup() -> None:  # untimed by pytest-benchmark; runs before every round
        rounds.ema.append(_timed(bench.update_ema))
        rounds.probe.append(_timed(bench.probe))
        rounds.norms.append(_timed(bench.norms_alone))
        bench.step(False)
        rounds.without.append(_timed(lambda: bench.step(False)))

    benchmark.pedantic(bench.step, args=(True,), setup=setup, rounds=config.rounds,
                       warmup_rounds=config.warmup_rounds)
    if benchmark.disabled:
        return
    result = Result.of(list(benchmark.stats.stats.data), rounds.skip(config.warmup_rounds),
                       bench.counter.graphs, every_step=mode == "compiled")
    RESULTS[name, mode] = result
    benchmark.extra_info.update(
        model=name, mode=mode, stride=STRIDE, without_ms=result.without_ms,
        with_ms=result.with_ms, norm_op_ms=result.norms_ms, ema_ms=result.ema_ms,
        probe_ms=result.probe_ms, in_graph_pct=result.in_graph_pct,
        paired_pct=result.paired_pct, stride_pct=result.stride_pct,
        overhead_pct=result.overhead_pct,
        target_pct=TARGET_PERCENT, verdict=result.verdict,
        graphs=result.graphs, build_s=build_s)
