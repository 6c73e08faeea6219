"""Training-step throughput of CNNHost with seeds, as a ratio of the bare host's step.

Run the table with::

    pytest bench/test_train_step.py --benchmark-enable -s

One step is forward, backward and SGD on a batch of 64 images 3x32x32 through
the default ``CNNHost`` (base_channels=32, three blocks, channels_last). Cases:

* ``bare``: the host alone (its ratio against itself shows the timing noise;
  compiled, a ``MorphogeneticModel`` without slots, as ``esper grow --max-seeds 0``
  trains it);
* ``dormant``: three empty slots (``early``, ``mid``, ``late``);
* ``training`` / ``blending`` (alpha 0.5) / ``fossilized``: a ``norm`` seed in ``mid``;
* ``seed_alone``: the ``norm`` seed's own forward and backward on the real
  ``mid`` features (input requiring grad, as inside the slot), no host.

Modes: ``eager`` is the stateful loop (``model(x)``, ``loss.backward()``,
``torch.optim.SGD.step()`` with the trainer's momentum and weight decay);
``compiled`` is the step ``esper grow`` runs (:func:`esper.tolaria.step.train_step`
compiled by :func:`esper.tolaria.compiled.build_step`: ``torch.func`` gradients
over ``functional_forward``, the group norms, the seeds' health checks, the SGD
update and the buffer commit, one inductor graph, ``fullgraph=True``). Its
three seeded cases share one graph: only the slot states passed in differ.
Compiled cases run only with ``--benchmark-enable`` (three inductor graphs,
about a minute each cold on a two-core CPU).

Each case is timed by pytest-benchmark; the ``setup`` of every round runs the
bare host's step of the same mode (and, in compiled mode, the eager step of
the same case) and times it with ``time.perf_counter``, so the steps alternate
and a change in machine load moves them all. In ``extra_info``: ``ratio``,
the median over rounds of ``case / bare`` (each pair ran back to back);
``versus_eager``, the same against the eager step; and, for seeded cases,
``floor = 1 + ratio(seed_alone)``, what the seed itself must cost. The
targets below are reported PASS/MISS in a table at the end (printed with
``-s``); nothing is asserted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from esper.kasmina import SlotState, set_alpha, transition
from esper.leyline import SeedStage
from esper.nn.blueprints import create
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim.sgd import OptimizerState, SGDConfig
from esper.tolaria.compiled import build_step
from esper.tolaria.inputs import StepInputs

# Two intra-op threads; ESPER_BENCH_THREADS=1 is steadier on a machine shared with other jobs.
torch.set_num_threads(int(os.environ.get("ESPER_BENCH_THREADS", "2")))

BATCH = 64
SLOTS = ("early", "mid", "late")
SEED_SLOT = "mid"
BLEND_ALPHA = 0.5
SGD = SGDConfig(lr=0.01)  # the trainer's momentum and weight decay
WARMUP_ROUNDS = 5
ROUNDS = 40
MODES = ("eager", "compiled")
CASES = ("bare", "seed_alone", "dormant", "training", "blending", "fossilized")
SEEDED = ("training", "blending", "fossilized")
# Upper bounds on the ratio to the bare host, by (case, mode).
TARGETS = {
    ("dormant", "eager"): 1.01, ("dormant", "compiled"): 1.01,
    ("training", "eager"): 1.10, ("training", "compiled"): 1.07,
    ("blending", "eager"): 1.10, ("blending", "compiled"): 1.07,
}

Step = Callable[[], None]


# --------------------------------------------------------------------------- data and models


def _batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    return images.contiguous(memory_format=torch.channels_last), labels


X, Y = _batch()


def _model(case: str, mode: str) -> nn.Module:
    """The bare host (eager: the plain module; compiled: the model without slots), the host
    with dormant slots, or with a GERMINATED ``norm`` seed."""
    torch.manual_seed(0)
    if case == "bare" and mode == "eager":
        return CNNHost()
    model = MorphogeneticModel(CNNHost(), slots=() if case == "bare" else SLOTS)
    if case in SEEDED:
        model.germinate_seed("norm", "bench", slot=SEED_SLOT)
    return model


def _stage_state(germinated: SlotState, case: str) -> SlotState:
    """The seed's state for ``case``, through the pure lifecycle."""
    state = transition(germinated, SeedStage.TRAINING)
    if case == "training":
        return state
    state = set_alpha(transition(state, SeedStage.BLENDING), BLEND_ALPHA)
    if case == "blending":
        return state
    return transition(transition(state, SeedStage.HOLDING), SeedStage.FOSSILIZED)


def _mid_features() -> Tensor:
    """The host's real ``mid`` features for the batch (64x64x8x8, channels_last)."""
    with torch.no_grad():
        return CNNHost().forward_to_segment(SEED_SLOT, X)


# --------------------------------------------------------------------------- steps


def _eager_step(model: nn.Module) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=SGD.lr, momentum=SGD.momentum,
                                weight_decay=SGD.weight_decay)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), Y).backward()
        optimizer.step()

    return step


class ProductStep:
    """The step ``esper grow`` runs, compiled as it compiles it, on ``model``'s own tensors.

    ``step(states)`` trains the model in place (parameters, momenta, BatchNorm
    buffers); every state of the same topology reuses the one graph.
    """

    def __init__(self, model: MorphogeneticModel) -> None:
        self.model = model
        self.inputs = StepInputs.of(model, OptimizerState(SGD).synced(model))
        self._compiled = build_step(True)

    def step(self, states: dict[str, SlotState]) -> None:
        self._compiled(self.model, replace(self.inputs, states=states), X, Y)


def _seed_alone_step(mode: str) -> Step:
    """The ``norm`` seed's forward and backward on ``mid`` features, nothing else."""
    features = _mid_features().requires_grad_(True)
    seed = create("cnn", "norm", features.shape[1]).to(memory_format=torch.channels_last)
    forward = torch.compile(seed, fullgraph=True) if mode == "compiled" else seed
    cotangent = torch.randn_like(features)

    def step() -> None:
        features.grad = None
        seed.zero_grad(set_to_none=True)
        forward(features).backward(cotangent)

    return step


class Steps:
    """Builds each (mode, case) step once; the compiled seeded cases share one trainer."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str], Step] = {}
        self._seeded_trainer: ProductStep | None = None

    def get(self, mode: str, case: str) -> Step:
        if (mode, case) not in self._steps:
            step = self._build(mode, case)
            step()  # compiles, where it compiles
            self._steps[mode, case] = step
        return self._steps[mode, case]

    def _build(self, mode: str, case: str) -> Step:
        if case == "seed_alone":
            return _seed_alone_step(mode)
        if mode == "eager":
            model = _model(case, mode)
            if case in SEEDED:
                slot = model.seed_slots[SEED_SLOT]
                slot.state = _stage_state(slot.state, case)
            return _eager_step(model)
        if case in SEEDED:
            if self._seeded_trainer is None:
                self._seeded_trainer = ProductStep(_model("training", mode))
            trainer = self._seeded_trainer
            germinated = trainer.model.seed_slots[SEED_SLOT].state
            states = {**trainer.model.slot_states(), SEED_SLOT: _stage_state(germinated, case)}
        else:
            trainer = ProductStep(_model(case, mode))
            states = trainer.model.slot_states()
        return lambda: trainer.step(states)


# --------------------------------------------------------------------------- report


def _paired_ratio(case: list[float], reference: list[float]) -> float:
    """Median over rounds of case / reference: each pair ran back to back, under the same load."""
    return statistics.median(c / r for c, r in zip(case, reference, strict=True))


@dataclass(frozen=True)
class Result:
    """One case's round times and those of the steps interleaved with them (seconds)."""

    case: list[float]
    bare: list[float]
    eager: list[float] | None = None  # compiled mode: the eager step of the same case

    @property
    def case_ms(self) -> float:
        return statistics.median(self.case) * 1e3

    @property
    def bare_ms(self) -> float:
        return statistics.median(self.bare) * 1e3

    @property
    def ratio(self) -> float:
        return _paired_ratio(self.case, self.bare)

    @property
    def versus_eager(self) -> float | None:
        return _paired_ratio(self.case, self.eager) if self.eager is not None else None


RESULTS: dict[tuple[str, str], Result] = {}  # (mode, case) -> times, in run order


def _floor(mode: str, case: str) -> float | None:
    """``1 + seed_alone / bare`` for a seeded case, once seed_alone was measured."""
    seed = RESULTS.get((mode, "seed_alone"))
    return 1 + seed.ratio if case in SEEDED and seed is not None else None


def _verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "PASS" if value <= target else "MISS"


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table() -> str:
    lines = [f"{'mode':9}{'case':11}{'step ms':>9}{'bare ms':>9}{'ratio':>7}{'floor':>7}"
             f"{'target':>7}{'':6}{'vs eager':>9}{'target':>7}"]
    for (mode, case), r in RESULTS.items():
        target = TARGETS.get((case, mode))
        eager_target = 1.0 if r.versus_eager is not None and case != "seed_alone" else None
        lines.append(
            f"{mode:9}{case:11}{r.case_ms:9.2f}{r.bare_ms:9.2f}{r.ratio:7.3f}"
            f"{_number(_floor(mode, case), 3):>7}{_number(target, 2):>7}"
            f"{_verdict(r.ratio, target):>6}{_number(r.versus_eager, 3):>9}"
            f"{_number(eager_target, 2):>7}{_verdict(r.versus_eager, eager_target):>6}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def steps() -> Iterator[Steps]:
    yield Steps()
    if RESULTS:
        print(f"\n\nTraining step, CNNHost, batch {BATCH}, {torch.get_num_threads()} threads, "
              f"medians of {ROUNDS} rounds; ratio and vs eager are medians of per-round "
              f"ratios to the step run just before\n" + _table())


# --------------------------------------------------------------------------- benchmark


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_train_step(benchmark, steps: Steps, mode: str, case: str) -> None:
    if mode == "compiled" and benchmark.disabled:
        pytest.skip("inductor compiles take minutes: run with --benchmark-enable")
    step = steps.get(mode, case)
    references = {"bare": steps.get(mode, "bare")}
    if mode == "compiled":
        references["eager"] = steps.get("eager", case)
    times: dict[str, list[float]] = {name: [] for name in references}

    def run_references() -> None:  # untimed by pytest-benchmark: the setup of each round
        for name, reference in references.items():
            start = time.perf_counter()
            reference()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(step, setup=run_references, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    if benchmark.disabled:
        return
    measured = {name: samples[WARMUP_ROUNDS:] for name, samples in times.items()}
    result = Result(list(benchmark.stats.stats.data), measured["bare"], measured.get("eager"))
    RESULTS[mode, case] = result
    benchmark.extra_info.update(
        mode=mode, case=case, bare_ms=result.bare_ms, ratio=result.ratio,
        floor=_floor(mode, case), target=TARGETS.get((case, mode)),
        versus_eager=result.versus_eager)
