"""What the training-step benchmarks share: device, CNN batch and models, the product step,
and timing by paired rounds.

``ESPER_BENCH_DEVICE`` picks the device (``cpu`` by default; ``cuda``, or ``auto``
as ``esper grow --device`` reads it; CUDA asked for and missing is refused at
import). ``ESPER_BENCH_THREADS`` sets torch's intra-op threads (2 by default; 1
is steadier on a machine shared with other jobs).

A timed step must end when the device has finished its work, not when it was
queued: :func:`synchronized` wraps every step the benchmarks time (on CUDA it
calls ``torch.cuda.synchronize()`` before returning; on the CPU it is the step).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from esper.errors import DeviceUnavailableError
from esper.kasmina import SlotState
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerConfig, OptimizerState, SGDConfig
from esper.tolaria.compiled import Backend, build_step
from esper.tolaria.hardware import resolve_device
from esper.tolaria.inputs import StepInputs, StepOptions
from esper.tolaria.step import DEFAULT_OPTIONS, StepResult

torch.set_num_threads(int(os.environ.get("ESPER_BENCH_THREADS", "2")))


def _bench_device() -> torch.device:
    """The device ``ESPER_BENCH_DEVICE`` names, checked as ``esper grow --device`` checks it."""
    name = os.environ.get("ESPER_BENCH_DEVICE", "cpu")
    try:
        return resolve_device(name)
    except (ValueError, DeviceUnavailableError) as error:
        raise RuntimeError(f"ESPER_BENCH_DEVICE={name}: {error}") from error


DEVICE = _bench_device()

BATCH = 64
SLOTS = ("early", "mid", "late")
SEED_SLOT = "mid"
SGD = SGDConfig(lr=0.01)  # the trainer's momentum and weight decay
WARMUP_ROUNDS = 5
ROUNDS = 40

Step = Callable[[], object]


def synchronized(step: Step) -> Step:
    """``step``, returning once the device has finished its work (CUDA), or ``step`` itself."""
    if DEVICE.type != "cuda":
        return step

    def run() -> object:
        result = step()
        torch.cuda.synchronize(DEVICE)
        return result

    return run


def image_batch(size: int = BATCH) -> tuple[Tensor, Tensor]:
    """``size`` random 3x32x32 images (channels_last) and labels of 10 classes, on the CPU."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    return images.contiguous(memory_format=torch.channels_last), labels


X, Y = (t.to(DEVICE) for t in image_batch())  # the CNN's batch, on the device


def cnn_model(case: str) -> MorphogeneticModel:
    """The default ``CNNHost`` (base_channels 32, three blocks) as ``esper grow`` trains it,
    on :data:`DEVICE`: without slots (``"bare"``), with the three :data:`SLOTS` empty
    (``"dormant"``), or (any other case) with a GERMINATED ``norm`` seed in :data:`SEED_SLOT`."""
    torch.manual_seed(0)
    slots = () if case == "bare" else SLOTS
    model = MorphogeneticModel(CNNHost(), slots=slots, device=DEVICE)
    if case not in ("bare", "dormant"):
        model.germinate_seed("norm", "bench", slot=SEED_SLOT)
    return model


class ProductStep:
    """The step ``esper grow`` runs, on ``model``'s own tensors: compiled as it compiles it
    (through ``counter``, a fresh inductor ``CompileCounter`` by default) or eager.

    ``step(states)`` trains the model in place (parameters, optimizer state,
    BatchNorm buffers) with the slot states ``states`` (default: the model's own)
    and returns the step's result; every state of one topology reuses one graph.
    """

    def __init__(self, model: MorphogeneticModel, x: Tensor, y: Tensor,
                 config: OptimizerConfig = SGD, *, compile: bool = True,
                 options: StepOptions = DEFAULT_OPTIONS, counter: Backend | None = None) -> None:
        self.model = model
        self.x, self.y = x, y
        self.inputs = StepInputs.of(model, OptimizerState(config).synced(model))
        self.options = options
        self._step = build_step(compile, counter)

    def step(self, states: Mapping[str, SlotState] | None = None) -> StepResult:
        inputs = self.inputs if states is None else replace(self.inputs, states=states)
        return self._step(self.model, inputs, self.x, self.y, self.options)


def paired_ratio(case: list[float], reference: list[float]) -> float:
    """Median over rounds of case / reference: each pair ran back to back, under the same load."""
    return statistics.median(c / r for c, r in zip(case, reference, strict=True))


@dataclass(frozen=True)
class Rounds:
    """A case's round times and, per reference, the times of the step run just before each
    round (seconds; warm-up rounds left out)."""

    case: list[float]
    references: dict[str, list[float]]

    @property
    def case_ms(self) -> float:
        return statistics.median(self.case) * 1e3

    def reference_ms(self, name: str) -> float:
        return statistics.median(self.references[name]) * 1e3

    def ratio(self, name: str) -> float:
        """Median of the per-round ratios of the case to reference ``name``."""
        return paired_ratio(self.case, self.references[name])


def paired_rounds(benchmark, step: Step, references: Mapping[str, Step]) -> Rounds | None:
    """Time ``step`` by pytest-benchmark, running every reference step before each round.

    The references run in the ``setup`` of each round (untimed by
    pytest-benchmark), each timed by ``time.perf_counter``, so the steps
    alternate and a change in machine load moves them all; pass steps that are
    :func:`synchronized`. Returns ``None`` when benchmarks are disabled (one
    round ran as a smoke test).
    """
    times: dict[str, list[float]] = {name: [] for name in references}

    def run_references() -> None:
        for name, reference in references.items():
            start = time.perf_counter()
            reference()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(step, setup=run_references, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)
    if benchmark.disabled:
        return None
    return Rounds(list(benchmark.stats.stats.data),
                  {name: samples[WARMUP_ROUNDS:] for name, samples in times.items()})


def number(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, or blank for ``None`` (a table cell)."""
    return "" if value is None else f"{value:.{digits}f}"
