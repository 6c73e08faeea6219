"""The product's training step with each optimizer and forward precision, bare and with a seed.

Run: ``pytest bench/test_step_optimizers.py --benchmark-enable -s`` (prefix
``ESPER_BENCH_DEVICE=cuda`` on a GPU).

One step is the step ``esper grow`` runs (:func:`esper.tolaria.step.train_step`:
forward, backward, group norms, health checks, the optimizer's update and the
buffer commit) on a batch of 64 images 3x32x32 through the default ``CNNHost``
(base_channels=32, three blocks, channels_last), with the optimizer
``OptimizerState(optimizer_config(name)).synced(model)`` builds (its default
rates) and the forward under ``StepOptions(autocast=...)``. Cases, for each
optimizer (``sgd``, ``adamw``) and precision (``fp32``; ``bf16``: bfloat16
autocast, skipped where the hardware has none):

* ``bare``: a ``MorphogeneticModel`` of the host without slots (as ``esper grow
  --max-seeds 0`` trains it);
* ``training``: three slots (``early``, ``mid``, ``late``), a ``norm`` seed in
  TRAINING in ``mid``.

Modes: ``compiled`` is ``build_step(True)`` (one inductor graph per case,
``fullgraph=True``, counted by a ``CompileCounter``; these cases run only with
``--benchmark-enable``, eight compiles of about a minute each on a two-core
CPU); ``eager`` is ``build_step(False)``, measuring the group norms only where
``esper grow --no-compile`` does (at the telemetry stride, so not here).

Rounds are paired as in ``bench/test_train_step.py``: the ``setup`` of every
round runs the bare step of the same mode, optimizer and precision (and, for a
bare case, the ``sgd``/``fp32`` bare step) and times it. In ``extra_info`` and
the table printed at the end (with ``-s``): ``step_ms``; ``ratio``, the median
over rounds of ``case / bare``: the seed's cost under that optimizer and
precision (the bare case's shows the timing noise); ``versus_sgd_fp32``, for a
bare case, the median of ``bare / sgd-fp32 bare``: what the optimizer and the
precision cost. Nothing about speed is asserted; what would make the numbers
meaningless is: a non-finite loss, a group skipped or left unchanged by the
steps, a compiled step with other than one graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor

from bench.train_step_support import (
    DEVICE,
    ROUNDS,
    SEED_SLOT,
    ProductStep,
    Rounds,
    X,
    Y,
    cnn_model,
    number,
    paired_rounds,
    synchronized,
)
from esper.errors import PrecisionUnsupportedError
from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.leyline.constants import OPTIMIZERS
from esper.optim import optimizer_config
from esper.tolaria.compiled import CompileCounter
from esper.tolaria.hardware import autocast_dtype
from esper.tolaria.inputs import StepOptions
from esper.tolaria.step import StepResult

PRECISIONS = ("fp32", "bf16")
BASELINE = ("sgd", "fp32")  # the optimizer and precision every other bare step is set against
MODES = ("eager", "compiled")
CASES = ("bare", "training")


@dataclass(frozen=True)
class Key:
    """One benchmark case: mode, optimizer, precision and host case."""

    mode: str
    optimizer: str
    precision: str
    case: str

    @property
    def bare(self) -> Key:
        """The bare host under the same mode, optimizer and precision."""
        return replace(self, case="bare")

    @property
    def baseline(self) -> Key:
        """The bare host under the same mode with the :data:`BASELINE` optimizer and precision."""
        optimizer, precision = BASELINE
        return replace(self, optimizer=optimizer, precision=precision, case="bare")


class CaseStep:
    """One case's product step on its own model, its compile counter and its latest result.

    Raises:
        PrecisionUnsupportedError: the precision does not run on this hardware.
    """

    def __init__(self, key: Key) -> None:
        autocast = autocast_dtype(key.precision, DEVICE)
        model = cnn_model(key.case)
        if key.case == "training":
            slot = model.seed_slots[SEED_SLOT]
            slot.state = transition(slot.state, SeedStage.TRAINING)
        compiled = key.mode == "compiled"
        self.key = key
        self.counter = CompileCounter() if compiled else None
        self.product = ProductStep(model, X, Y, optimizer_config(key.optimizer),
                                   compile=compiled, counter=self.counter,
                                   options=StepOptions(measure=compiled, autocast=autocast))
        self.result: StepResult | None = None
        self.timed = synchronized(self._run)

    def _run(self) -> None:
        self.result = self.product.step()

    def snapshot(self) -> dict[str, Tensor]:
        """Copies of the parameters now."""
        return {name: p.clone() for name, p in self.product.inputs.params.items()}

    def check_trained(self, before: dict[str, Tensor], when: str) -> None:
        """Assert that the steps since ``before`` trained: a finite loss, every group updated
        and moved, and (compiled) still exactly one graph."""
        assert self.result is not None, f"{self.key}: no step ran {when}"
        loss = self.result.loss.float()
        assert torch.isfinite(loss).item(), f"{self.key}: loss {loss.item()} {when}"
        assert self.result.updated.all().item(), \
            f"{self.key}: groups skipped {when}: {self.result.updated.tolist()}"
        params = self.product.inputs.params
        for group in self.product.inputs.groups:
            assert any(not torch.equal(before[n], params[n]) for n in group), \
                f"{self.key}: no parameter of {group[0]}'s group moved {when}"
        if self.counter is not None:
            assert self.counter.graphs == 1, f"{self.key}: {self.counter.graphs} graphs {when}"


class Steps:
    """Builds and checks each case's step once (a compiled one compiles at its first call)."""

    def __init__(self) -> None:
        self._steps: dict[Key, CaseStep] = {}

    def get(self, key: Key) -> CaseStep:
        if key not in self._steps:
            try:
                step = CaseStep(key)
            except PrecisionUnsupportedError as error:
                pytest.skip(str(error))
            before = step.snapshot()
            step.timed()
            step.check_trained(before, "after its first step")
            self._steps[key] = step
        return self._steps[key]


# --------------------------------------------------------------------------- report


RESULTS: dict[Key, Rounds] = {}  # in run order


def _versus_baseline(key: Key, rounds: Rounds) -> float | None:
    """A bare case's step over the sgd/fp32 bare step (for that one itself: the noise)."""
    if key.case != "bare":
        return None
    return rounds.ratio("baseline" if "baseline" in rounds.references else "bare")


def _table() -> str:
    lines = [f"{'mode':10}{'optimizer':10}{'precision':10}{'case':10}{'step ms':>9}"
             f"{'bare ms':>9}{'ratio':>7}{'vs sgd/fp32':>13}"]
    for key, rounds in RESULTS.items():
        lines.append(
            f"{key.mode:10}{key.optimizer:10}{key.precision:10}{key.case:10}"
            f"{rounds.case_ms:9.2f}{rounds.reference_ms('bare'):9.2f}{rounds.ratio('bare'):7.3f}"
            f"{number(_versus_baseline(key, rounds), 3):>13}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def steps() -> Iterator[Steps]:
    yield Steps()
    if RESULTS:
        print(f"\n\nTraining step by optimizer and precision (CNNHost, batch {X.shape[0]}, "
              f"channels_last, {DEVICE}, {torch.get_num_threads()} threads), medians of "
              f"{ROUNDS} rounds; ratio: to the bare host of the same optimizer and precision; "
              f"vs sgd/fp32: the bare step to sgd/fp32's; both medians of per-round ratios to "
              f"the step run just before\n" + _table())


# --------------------------------------------------------------------------- benchmark


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("mode", MODES)
def test_step_optimizer(benchmark, steps: Steps, mode: str, optimizer: str, precision: str,
                        case: str) -> None:
    if mode == "compiled" and benchmark.disabled:
        pytest.skip("inductor compiles take minutes: run with --benchmark-enable")
    key = Key(mode, optimizer, precision, case)
    step = steps.get(key)
    references = {"bare": steps.get(key.bare).timed}
    if case == "bare" and key != key.baseline:
        references["baseline"] = steps.get(key.baseline).timed
    before = step.snapshot()
    rounds = paired_rounds(benchmark, step.timed, references)
    step.check_trained(before, "after the warm-up and timed rounds")
    if rounds is None:
        return
    RESULTS[key] = rounds
    benchmark.extra_info.update(
        mode=mode, optimizer=optimizer, precision=precision, case=case,
        step_ms=rounds.case_ms, bare_ms=rounds.reference_ms("bare"),
        ratio=rounds.ratio("bare"), versus_sgd_fp32=_versus_baseline(key, rounds),
        graphs=step.counter.graphs if step.counter is not None else None)
