"""Training-step throughput of a host with seeds, as a ratio of the bare host's step.

Two host families: the built-in ``CNNHost`` and a grafted ResNet-18.

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

``resnet18`` (``test_grafted_resnet18_step``, ``-k resnet``): the ResNet-18 of
``tests/graft_models.py`` (torchvision's module names, widths 8-16-32-64, so
small that per-op overheads weigh more than on the CNN; contiguous format) on
a batch of 16 images 3x32x32, grafted by :func:`esper.graft`. Cases:

* ``bare``: eager, the plain ResNet (no Esper at all); compiled, a
  ``MorphogeneticModel`` of it without slots (a graft needs a point);
* ``dormant``: empty slots at ``layer1``, ``layer2``, ``layer3.0``, ``layer4``;
* ``training``: the same with a ``norm`` seed in TRAINING at ``layer3.0``
  (features 16x32x2x2);
* ``seed_alone``: that seed alone on the real ``layer3.0`` features.

Modes: ``eager`` is the stateful loop (``model(x)``, ``loss.backward()``,
``torch.optim.SGD.step()`` with the trainer's momentum and weight decay);
``compiled`` is the step ``esper grow`` runs (:func:`esper.tolaria.step.train_step`
compiled by :func:`esper.tolaria.compiled.build_step`: ``torch.func`` gradients
over ``functional_forward``, the group norms, the seeds' health checks, the SGD
update and the buffer commit, one inductor graph, ``fullgraph=True``). Its
three seeded cases share one graph: only the slot states passed in differ.
Compiled cases run only with ``--benchmark-enable`` (three inductor graphs per
host family and one per ``seed_alone``, about a minute each cold on a two-core
CPU).

Each case is timed by pytest-benchmark; the ``setup`` of every round runs the
bare host's step of the same mode (and, in compiled mode, the eager step of
the same case) and times it with ``time.perf_counter``, so the steps alternate
and a change in machine load moves them all. In ``extra_info``: ``ratio``,
the median over rounds of ``case / bare`` (each pair ran back to back);
``versus_eager``, the same against the eager step; and, for seeded cases,
``floor = 1 + ratio(seed_alone)``, what the seed itself must cost. The
targets below (the same for both families) are reported PASS/MISS in one
table at the end (printed with ``-s``); nothing is asserted.
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

import esper
from esper.kasmina import SlotState, set_alpha, transition
from esper.leyline import SeedStage
from esper.nn.blueprints import create
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig
from esper.tolaria.compiled import build_step
from esper.tolaria.inputs import StepInputs
from tests.graft_models import ResNet, resnet18

# Two intra-op threads; ESPER_BENCH_THREADS=1 is steadier on a machine shared with other jobs.
torch.set_num_threads(int(os.environ.get("ESPER_BENCH_THREADS", "2")))

BATCH = 64
SLOTS = ("early", "mid", "late")
SEED_SLOT = "mid"
RESNET_BATCH = 16
RESNET_POINTS = ("layer1", "layer2", "layer3.0", "layer4")
RESNET_SEED_POINT = "layer3.0"
BLEND_ALPHA = 0.5
SGD = SGDConfig(lr=0.01)  # the trainer's momentum and weight decay
WARMUP_ROUNDS = 5
ROUNDS = 40
MODES = ("eager", "compiled")
CASES = ("bare", "seed_alone", "dormant", "training", "blending", "fossilized")
RESNET_CASES = ("bare", "seed_alone", "dormant", "training")
SEEDED = ("training", "blending", "fossilized")
# Upper bounds on the ratio to the bare host, by (case, mode).
TARGETS = {
    ("dormant", "eager"): 1.01, ("dormant", "compiled"): 1.01,
    ("training", "eager"): 1.10, ("training", "compiled"): 1.07,
    ("blending", "eager"): 1.10, ("blending", "compiled"): 1.07,
}

Step = Callable[[], None]


# --------------------------------------------------------------------------- data and models


def _batch(size: int = BATCH) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    return images.contiguous(memory_format=torch.channels_last), labels


X, Y = _batch()


def _model(case: str, mode: str) -> nn.Module:
    """The bare host (eager: the plain module; compiled: the model without slots), the host
    with dormant slots, or with a GERMINATED ``norm`` seed."""
    torch.manual_seed(0)
    if case == "bare" and mode == "eager":
        return CNNHost()
    if case == "bare":
        return MorphogeneticModel(CNNHost(), slots=())
    model = MorphogeneticModel(CNNHost(), slots=SLOTS)
    if case in SEEDED:
        model.germinate_seed("norm", "bench", slot=SEED_SLOT)
    return model


def _mid_features() -> Tensor:
    """The host's real ``mid`` features for the batch (64x64x8x8, channels_last)."""
    with torch.no_grad():
        return CNNHost().forward_to_segment(SEED_SLOT, X)


class _ResNetHost(ResNet):
    """The ResNet-18 as a host naming no injection point: a model of it may have no slot."""

    def injection_points(self) -> dict[str, str]:
        return {}

    def example_input(self) -> Tensor:
        return RX[:2]


def _resnet_batch() -> tuple[Tensor, Tensor]:
    images, labels = _batch(RESNET_BATCH)
    return images.contiguous(), labels  # as a user's data loader gives them


RX, RY = _resnet_batch()


def _resnet_model(case: str, mode: str) -> nn.Module:
    """The plain ResNet-18 (eager bare), a model of it without slots (compiled bare), grafted
    with dormant slots, or with a GERMINATED ``norm`` seed at ``layer3.0``."""
    if case == "bare" and mode == "eager":
        return resnet18()
    if case == "bare":
        torch.manual_seed(0)  # as resnet18() initialises
        return MorphogeneticModel(_ResNetHost(), slots=())
    model = esper.graft(resnet18(), RESNET_POINTS, example_input=RX)
    if case in SEEDED:
        model.germinate_seed("norm", "bench", slot=RESNET_SEED_POINT)
    return model


def _resnet_features() -> Tensor:
    """The ResNet's real ``layer3.0`` features for the batch (16x32x2x2)."""
    captured: list[Tensor] = []
    net = resnet18()
    net.get_submodule(RESNET_SEED_POINT).register_forward_hook(
        lambda module, args, output: captured.append(output))
    with torch.no_grad():
        net(RX)
    return captured[0]


@dataclass(frozen=True)
class Host:
    """A host family: its batch, its model per (case, mode), the slot its seed sits in."""

    name: str
    title: str
    x: Tensor
    y: Tensor
    model: Callable[[str, str], nn.Module]
    seed_slot: str
    features: Callable[[], Tensor]  # the seed slot's real features for the batch
    memory_format: torch.memory_format


CNN = Host("cnn", f"CNNHost, batch {BATCH}, channels_last", X, Y, _model, SEED_SLOT,
           _mid_features, torch.channels_last)
RESNET = Host("resnet18", f"tests.graft_models.resnet18 grafted at {', '.join(RESNET_POINTS)}"
              f" (seed at {RESNET_SEED_POINT}), batch {RESNET_BATCH}", RX, RY, _resnet_model,
              RESNET_SEED_POINT, _resnet_features, torch.contiguous_format)


def _stage_state(germinated: SlotState, case: str) -> SlotState:
    """The seed's state for ``case``, through the pure lifecycle."""
    state = transition(germinated, SeedStage.TRAINING)
    if case == "training":
        return state
    state = set_alpha(transition(state, SeedStage.BLENDING), BLEND_ALPHA)
    if case == "blending":
        return state
    return transition(transition(state, SeedStage.HOLDING), SeedStage.FOSSILIZED)


# --------------------------------------------------------------------------- steps


def _eager_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=SGD.lr, momentum=SGD.momentum,
                                weight_decay=SGD.weight_decay)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


class ProductStep:
    """The step ``esper grow`` runs, compiled as it compiles it, on ``model``'s own tensors.

    ``step(states)`` trains the model in place (parameters, momenta, BatchNorm
    buffers); every state of the same topology reuses the one graph.
    """

    def __init__(self, model: MorphogeneticModel, x: Tensor, y: Tensor) -> None:
        self.model = model
        self.x, self.y = x, y
        self.inputs = StepInputs.of(model, OptimizerState(SGD).synced(model))
        self._compiled = build_step(True)

    def step(self, states: dict[str, SlotState]) -> None:
        self._compiled(self.model, replace(self.inputs, states=states), self.x, self.y)


def _seed_alone_step(host: Host, mode: str) -> Step:
    """The ``norm`` seed's forward and backward on the seed slot's features, nothing else."""
    features = host.features().requires_grad_(True)
    seed = create("cnn", "norm", features.shape[1]).to(memory_format=host.memory_format)
    forward = torch.compile(seed, fullgraph=True) if mode == "compiled" else seed
    cotangent = torch.randn_like(features)

    def step() -> None:
        features.grad = None
        seed.zero_grad(set_to_none=True)
        forward(features).backward(cotangent)

    return step


class Steps:
    """Builds each (host, mode, case) step once; the compiled seeded cases of a host share one
    trainer."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str, str], Step] = {}
        self._seeded_trainers: dict[str, ProductStep] = {}

    def get(self, host: Host, mode: str, case: str) -> Step:
        if (host.name, mode, case) not in self._steps:
            step = self._build(host, mode, case)
            step()  # compiles, where it compiles
            self._steps[host.name, mode, case] = step
        return self._steps[host.name, mode, case]

    def _build(self, host: Host, mode: str, case: str) -> Step:
        if case == "seed_alone":
            return _seed_alone_step(host, mode)
        if mode == "eager":
            model = host.model(case, mode)
            if case in SEEDED:
                slot = model.seed_slots[host.seed_slot]
                slot.state = _stage_state(slot.state, case)
            return _eager_step(model, host.x, host.y)
        if case in SEEDED:
            if host.name not in self._seeded_trainers:
                self._seeded_trainers[host.name] = ProductStep(
                    host.model("training", mode), host.x, host.y)
            trainer = self._seeded_trainers[host.name]
            germinated = trainer.model.seed_slots[host.seed_slot].state
            states = {**trainer.model.slot_states(),
                      host.seed_slot: _stage_state(germinated, case)}
        else:
            trainer = ProductStep(host.model(case, mode), host.x, host.y)
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


RESULTS: dict[tuple[str, str, str], Result] = {}  # (host, mode, case) -> times, in run order


def _floor(host: str, mode: str, case: str) -> float | None:
    """``1 + seed_alone / bare`` for a seeded case, once seed_alone was measured."""
    seed = RESULTS.get((host, mode, "seed_alone"))
    return 1 + seed.ratio if case in SEEDED and seed is not None else None


def _verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "PASS" if value <= target else "MISS"


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table() -> str:
    lines = [f"{'host':10}{'mode':9}{'case':11}{'step ms':>9}{'bare ms':>9}{'ratio':>7}"
             f"{'floor':>7}{'target':>7}{'':6}{'vs eager':>9}{'target':>7}"]
    for (host, mode, case), r in RESULTS.items():
        target = TARGETS.get((case, mode))
        eager_target = 1.0 if r.versus_eager is not None and case != "seed_alone" else None
        lines.append(
            f"{host:10}{mode:9}{case:11}{r.case_ms:9.2f}{r.bare_ms:9.2f}{r.ratio:7.3f}"
            f"{_number(_floor(host, mode, case), 3):>7}{_number(target, 2):>7}"
            f"{_verdict(r.ratio, target):>6}{_number(r.versus_eager, 3):>9}"
            f"{_number(eager_target, 2):>7}{_verdict(r.versus_eager, eager_target):>6}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def steps() -> Iterator[Steps]:
    yield Steps()
    if RESULTS:
        hosts = "; ".join(f"{h.name}: {h.title}" for h in (CNN, RESNET)
                          if any(key[0] == h.name for key in RESULTS))
        print(f"\n\nTraining step ({hosts}), {torch.get_num_threads()} threads, "
              f"medians of {ROUNDS} rounds; ratio and vs eager are medians of per-round "
              f"ratios to the step run just before\n" + _table())


# --------------------------------------------------------------------------- benchmark


def _measure(benchmark, steps: Steps, host: Host, mode: str, case: str) -> None:
    if mode == "compiled" and benchmark.disabled:
        pytest.skip("inductor compiles take minutes: run with --benchmark-enable")
    step = steps.get(host, mode, case)
    references = {"bare": steps.get(host, mode, "bare")}
    if mode == "compiled":
        references["eager"] = steps.get(host, "eager", case)
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
    RESULTS[host.name, mode, case] = result
    benchmark.extra_info.update(
        host=host.name, mode=mode, case=case, bare_ms=result.bare_ms, ratio=result.ratio,
        floor=_floor(host.name, mode, case), target=TARGETS.get((case, mode)),
        versus_eager=result.versus_eager)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_train_step(benchmark, steps: Steps, mode: str, case: str) -> None:
    _measure(benchmark, steps, CNN, mode, case)


@pytest.mark.parametrize("case", RESNET_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_grafted_resnet18_step(benchmark, steps: Steps, mode: str, case: str) -> None:
    _measure(benchmark, steps, RESNET, mode, case)
