"""What a tournament of K candidate seeds costs per training step, against the bare host.

Run it with::

    python -m bench.tournament                      # eager and compiled, about 25 minutes
    python -m bench.tournament --modes eager        # a minute
    python -m bench.tournament --blueprints norm --counts 1 4

Model: the default ``CNNHost`` (base_channels 32, three slots, channels_last),
batch 64 of 3x32x32, SGD with the trainer's momentum and weight decay; the
product step (:func:`esper.tolaria.step.train_step`: the one ``esper grow``
runs, eagerly or compiled by inductor with ``fullgraph=True``). Cases, each in
TRAINING in ``mid``:

* ``K = 1``: one seed of the blueprint (no tournament);
* ``K >= 2``, ``batched``: K stacked candidates run by ``torch.func.vmap``
  (:class:`esper.nn.candidates.CandidateSeeds`, what Esper runs);
* ``K >= 2``, ``loop``: the same K candidates run one after the other, each
  its own seed call on its slice of the stacked weights (what K single seeds
  cost at one slot: the host has no K slots at one point, so this is the
  "K separate seeds" comparison that can be built).

Timing: in one process per mode (threads 2 unless ``--threads``), each
case's step and the bare host's step alternate for :data:`ROUNDS` rounds after
:data:`WARMUP` warm-ups; ``ratio`` is the median of per-round ``case / bare``.
Compiled cases compile once each (inductor, about 30-60 s cold on a 2-core
CPU). The target of the issue: norm at K = 4 no more than 1.15 times the bare
host, and batched never slower than loop; both printed PASS/MISS, nothing asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.nn.candidates import CandidateSeeds
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig
from esper.tolaria.compiled import CompileCounter, build_step
from esper.tolaria.inputs import StepInputs
from esper.tolaria.step import DEFAULT_OPTIONS

BATCH, SLOTS, SLOT = 64, ("early", "mid", "late"), "mid"
SGD = SGDConfig(lr=0.01)
WARMUP, ROUNDS = 5, 30
TARGET = ("norm", 4, 1.15)  # blueprint, K, most times the bare host


class LoopedCandidates(CandidateSeeds):
    """The same stacked candidates, run one after the other (K seed calls, then a stack)."""

    def forward(self, x: Tensor) -> Tensor:
        params, buffers = self._weights()
        return torch.stack([self._one({n: p[k] for n, p in params.items()},
                                      {n: b[k] for n, b in buffers.items()}, x)
                            for k in range(self.count)])


def model_for(blueprint: str | None, count: int, looped: bool) -> MorphogeneticModel:
    """The CNN with ``count`` candidates of ``blueprint`` in TRAINING at ``mid`` (``None``:
    the bare host, no slots)."""
    torch.manual_seed(0)
    if blueprint is None:
        return MorphogeneticModel(CNNHost(), slots=())
    model = MorphogeneticModel(CNNHost(), slots=SLOTS)
    model.germinate_seed(blueprint, "bench", slot=SLOT, candidates=count)
    slot = model.seed_slots[SLOT]
    if looped:
        stacked = slot.seed
        assert isinstance(stacked, CandidateSeeds)
        looped_seeds = LoopedCandidates([stacked.member(k) for k in range(count)])
        looped_seeds.load_state_dict(stacked.state_dict())
        slot.seed = looped_seeds
    slot.state = transition(slot.state, SeedStage.TRAINING)
    return model


def stepper(model: MorphogeneticModel, compiled: bool, x: Tensor, y: Tensor
            ) -> Callable[[], object]:
    inputs = StepInputs.of(model, OptimizerState(SGD).synced(model))
    step = build_step(compiled, CompileCounter("inductor") if compiled else None)
    return lambda: step(model, inputs, x, y, DEFAULT_OPTIONS)


def paired(case: Callable[[], object], bare: Callable[[], object]) -> tuple[float, float, float]:
    """(case ms, bare ms, median ratio) over :data:`ROUNDS` alternating rounds."""
    case_times, bare_times = [], []
    for round_ in range(WARMUP + ROUNDS):
        for step, times in ((bare, bare_times), (case, case_times)):
            started = time.perf_counter()
            step()
            if round_ >= WARMUP:
                times.append(time.perf_counter() - started)
    ratio = statistics.median(c / b for c, b in zip(case_times, bare_times, strict=True))
    return statistics.median(case_times) * 1e3, statistics.median(bare_times) * 1e3, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    parser.add_argument("--blueprints", nargs="+", default=["norm", "conv_light"])
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-loop", action="store_true", help="skip the loop comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=generator).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    print(f"Training step with K candidates in TRAINING at '{SLOT}' (CNNHost, batch {BATCH}, "
          f"channels_last, {args.threads} threads); ratio: median of per-round step / bare "
          f"host step over {ROUNDS} rounds", flush=True)
    print(f"{'mode':9} {'blueprint':10} {'K':>2} {'kind':8} {'step ms':>8} {'bare ms':>8} "
          f"{'ratio':>6}  target", flush=True)
    for mode in args.modes:
        compiled = mode == "compiled"
        bare = stepper(model_for(None, 1, False), compiled, x, y)
        for blueprint in args.blueprints:
            ratios: dict[tuple[int, str], float] = {}
            for count in args.counts:
                kinds = ["batched"] if count == 1 or args.no_loop else ["batched", "loop"]
                for kind in kinds:
                    case = stepper(model_for(blueprint, count, kind == "loop"), compiled, x, y)
                    step_ms, bare_ms, ratio = paired(case, bare)
                    ratios[count, kind] = ratio
                    label = "single" if count == 1 else kind
                    note = verdict(blueprint, count, kind, ratio, ratios)
                    print(f"{mode:9} {blueprint:10} {count:>2} {label:8} {step_ms:8.2f} "
                          f"{bare_ms:8.2f} {ratio:6.3f}  {note}", flush=True)


def verdict(blueprint: str, count: int, kind: str, ratio: float,
            ratios: dict[tuple[int, str], float]) -> str:
    """PASS/MISS against the issue's targets, where one applies to this row."""
    notes = []
    if (blueprint, count) == TARGET[:2] and kind == "batched":
        notes.append(f"<= {TARGET[2]}: {'PASS' if ratio <= TARGET[2] else 'MISS'}")
    if kind == "loop" and (count, "batched") in ratios:
        batched = ratios[count, "batched"]
        notes.append(f"batched/loop {batched / ratio:.2f}: "
                     f"{'PASS' if batched <= ratio else 'MISS'}")
    return "; ".join(notes)


if __name__ == "__main__":
    main()
