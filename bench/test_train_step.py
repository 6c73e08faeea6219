"""Training-step throughput of a host with seeds, as a ratio of the bare host's step.

Two host families: the built-in ``CNNHost`` and a grafted ResNet-18.

Run the table with::

    pytest bench/test_train_step.py --benchmark-enable -s

(``ESPER_BENCH_DEVICE=cuda`` on a GPU: batches and models on the device, each
timed step synchronized; see :mod:`bench.train_step_support`.)

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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import esper
from bench.train_step_support import (
    BATCH,
    DEVICE,
    ROUNDS,
    SEED_SLOT,
    SGD,
    ProductStep,
    Rounds,
    Step,
    X,
    Y,
    cnn_model,
    image_batch,
    number,
    paired_rounds,
    synchronized,
)
from esper.kasmina import SlotState, set_alpha, transition
from esper.leyline import SeedStage
from esper.nn.blueprints import create
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from tests.graft_models import ResNet, resnet18

RESNET_BATCH = 16
RESNET_POINTS = ("layer1", "layer2", "layer3.0", "layer4")
RESNET_SEED_POINT = "layer3.0"
BLEND_ALPHA = 0.5
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

# --------------------------------------------------------------------------- data and models


def _model(case: str, mode: str) -> nn.Module:
    """The bare host (eager: the plain module; compiled: the model without slots), the host
    with dormant slots, or with a GERMINATED ``norm`` seed, on the device."""
    if case == "bare" and mode == "eager":
        torch.manual_seed(0)
        return CNNHost().to(DEVICE)
    return cnn_model(case)


def _mid_features() -> Tensor:
    """The host's real ``mid`` features for the batch (64x64x8x8, channels_last)."""
    with torch.no_grad():
        return CNNHost().to(DEVICE).forward_to_segment(SEED_SLOT, X)


class _ResNetHost(ResNet):
    """The ResNet-18 as a host naming no injection point: a model of it may have no slot."""

    def injection_points(self) -> dict[str, str]:
        return {}

    def example_input(self) -> Tensor:
        return RX[:2].cpu()  # the dry run runs before the move to the device


def _resnet_batch() -> tuple[Tensor, Tensor]:
    images, labels = image_batch(RESNET_BATCH)
    return images.contiguous().to(DEVICE), labels.to(DEVICE)  # as a user's data loader gives them


RX, RY = _resnet_batch()


def _resnet_model(case: str, mode: str) -> nn.Module:
    """The plain ResNet-18 (eager bare), a model of it without slots (compiled bare), grafted
    with dormant slots, or with a GERMINATED ``norm`` seed at ``layer3.0``."""
    if case == "bare" and mode == "eager":
        return resnet18().to(DEVICE)
    if case == "bare":
        torch.manual_seed(0)  # as resnet18() initialises
        return MorphogeneticModel(_ResNetHost(), slots=(), device=DEVICE)
    model = esper.graft(resnet18(), RESNET_POINTS, example_input=RX.cpu(), device=DEVICE)
    if case in SEEDED:
        model.germinate_seed("norm", "bench", slot=RESNET_SEED_POINT)
    return model


def _resnet_features() -> Tensor:
    """The ResNet's real ``layer3.0`` features for the batch (16x32x2x2)."""
    captured: list[Tensor] = []
    net = resnet18().to(DEVICE)
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


def _seed_alone_step(host: Host, mode: str) -> Step:
    """The ``norm`` seed's forward and backward on the seed slot's features, nothing else."""
    features = host.features().requires_grad_(True)
    seed = create("cnn", "norm", features.shape[1]).to(DEVICE, memory_format=host.memory_format)
    forward = torch.compile(seed, fullgraph=True) if mode == "compiled" else seed
    cotangent = torch.randn_like(features)

    def step() -> None:
        features.grad = None
        seed.zero_grad(set_to_none=True)
        forward(features).backward(cotangent)

    return step


class Steps:
    """Builds each (host, mode, case) step once, synchronized; the compiled seeded cases of a
    host share one trainer."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str, str], Step] = {}
        self._seeded_trainers: dict[str, ProductStep] = {}

    def get(self, host: Host, mode: str, case: str) -> Step:
        if (host.name, mode, case) not in self._steps:
            step = synchronized(self._build(host, mode, case))
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


@dataclass(frozen=True)
class Result:
    """One case's rounds: against the bare host's step and (compiled) the eager step of the
    same case, each run just before it."""

    rounds: Rounds

    @property
    def case_ms(self) -> float:
        return self.rounds.case_ms

    @property
    def bare_ms(self) -> float:
        return self.rounds.reference_ms("bare")

    @property
    def ratio(self) -> float:
        return self.rounds.ratio("bare")

    @property
    def versus_eager(self) -> float | None:
        return self.rounds.ratio("eager") if "eager" in self.rounds.references else None


RESULTS: dict[tuple[str, str, str], Result] = {}  # (host, mode, case) -> times, in run order


def _floor(host: str, mode: str, case: str) -> float | None:
    """``1 + seed_alone / bare`` for a seeded case, once seed_alone was measured."""
    seed = RESULTS.get((host, mode, "seed_alone"))
    return 1 + seed.ratio if case in SEEDED and seed is not None else None


def _verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "PASS" if value <= target else "MISS"


def _table() -> str:
    lines = [f"{'host':10}{'mode':9}{'case':11}{'step ms':>9}{'bare ms':>9}{'ratio':>7}"
             f"{'floor':>7}{'target':>7}{'':6}{'vs eager':>9}{'target':>7}"]
    for (host, mode, case), r in RESULTS.items():
        target = TARGETS.get((case, mode))
        eager_target = 1.0 if r.versus_eager is not None and case != "seed_alone" else None
        lines.append(
            f"{host:10}{mode:9}{case:11}{r.case_ms:9.2f}{r.bare_ms:9.2f}{r.ratio:7.3f}"
            f"{number(_floor(host, mode, case), 3):>7}{number(target, 2):>7}"
            f"{_verdict(r.ratio, target):>6}{number(r.versus_eager, 3):>9}"
            f"{number(eager_target, 2):>7}{_verdict(r.versus_eager, eager_target):>6}")
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
    rounds = paired_rounds(benchmark, step, references)
    if rounds is None:
        return
    result = Result(rounds)
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
