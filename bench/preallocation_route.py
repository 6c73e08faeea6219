"""A route to zero recompiles that Esper measured and did not take: seeds pre-allocated in
every slot for every blueprint, the dormant ones skipped by ``torch.cond``.

Run it with::

    python -m bench.preallocation_route               # about 8 minutes on a 2-core CPU
    python -m bench.preallocation_route --models digits

One graph would then serve every topology: germinating re-initialises a
pre-allocated seed and flips its ``active`` flag, pruning flips it back. The
benchmark times a plain SGD training step (forward, ``torch.autograd.grad``,
a masked update of every parameter) on the default ``CNNHost`` blocks with
slots early/mid/late, a ``norm`` seed TRAINING in mid, under inductor, each
case in a fresh process with an empty compile cache:

* ``bare``: the host alone; ``live``: the host and the live seed (what Esper
  compiles today, one graph per topology);
* ``flat``: the pre-allocated reserve, one ``torch.cond`` per slot and
  blueprint (3 x 4), the live seed's entry active;
* ``chained``: the same reserve, the conds of a slot chained so that a slot
  with no active seed pays one copy of its features, not four.

What it took to compile at all (torch 2.13): ``torch.cond`` inside
``torch.func.grad`` fails ("Expected FakeTensor"), so the gradients come
from ``torch.autograd.grad`` with ``torch._dynamo.config.trace_autograd_ops``;
parameters closed over by a branch fail inductor's check that both branches
give their gradients the same strides (a ``[C, 1, 3, 3]`` depthwise kernel
has two equally valid stride orders), so each seed's parameters enter the
cond flattened and are viewed back inside the branch; branch outputs are
copied to the host's memory format. The table prints each case's step, its
ratio to ``live`` and the first call (the compile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("digits", "reference")
CASES = ("bare", "live", "flat", "chained")
SLOTS = ("early", "mid", "late")
BLUEPRINTS = ("norm", "conv_light", "attention", "depthwise")
STEPS = 60


def measure(model_name: str, case: str) -> dict[str, float]:
    """In this process: the first step's seconds and the median of the last ``STEPS - 10``."""
    import torch
    from torch import nn

    from esper.nn.host import CNNHost
    from esper.nn.model import MorphogeneticModel
    from esper.nn.seed_parts import build_seed
    from esper.ops.formula import slot_forward

    torch.set_num_threads(2)
    torch._dynamo.config.trace_autograd_ops = True
    torch.manual_seed(0)
    digits = model_name == "digits"
    host = CNNHost(in_channels=1, base_channels=4) if digits else CNNHost()
    model = MorphogeneticModel(host, slots=SLOTS)
    model.germinate_seed("norm", "bench", slot="mid")
    model.seed_slots["mid"].advance_stage("TRAINING")
    state, live = model.seed_slots["mid"].state, model.seed_slots["mid"].seed
    reserve = {s: [build_seed(model.seed_slots[s].site, b, "sigmoid")[0] for b in BLUEPRINTS]
               for s in SLOTS}
    layout = host.memory_format

    def branch(seed: nn.Module, flat: tuple, h):  # type: ignore[no-untyped-def]
        shapes = {n: p.shape for n, p in seed.named_parameters()}
        params = {n: f.view(shape) for (n, shape), f in zip(shapes.items(), flat, strict=True)}
        out = slot_forward(state, lambda z: torch.func.functional_call(seed, params, (z,)), h)
        return out.clone(memory_format=layout)

    def flats(seed: nn.Module) -> tuple:
        return tuple(p.reshape(-1) for p in seed.parameters())

    def chain(h, active, seeds: list, flat: list, j: int):  # type: ignore[no-untyped-def]
        """Seed ``j`` if active, else the chain from ``j + 1``; ``flat[k]`` is seed ``k``'s
        flattened parameters (operands all the way down, never closed over)."""
        if j == len(seeds):
            return h.clone(memory_format=layout)
        sizes = [len(f) for f in flat[j:]]

        def split(ops: tuple) -> list:
            out, at = [], 0
            for size in sizes:
                out.append(ops[at:at + size])
                at += size
            return out

        return torch.cond(active[j],
                          lambda h, *ops: branch(seeds[j], split(ops)[0], h),
                          lambda h, *ops: chain(h, active, seeds,
                                                [*flat[:j + 1], *split(ops)[1:]], j + 1),
                          (h, *[f for group in flat[j:] for f in group]))

    def forward(x, active):  # type: ignore[no-untyped-def]
        h = x.contiguous(memory_format=layout)
        for i, slot in enumerate(SLOTS):
            h = host.blocks[i](h)
            if case == "live" and slot == "mid":
                h = slot_forward(state, live, h)
            elif case == "flat":
                for j, seed in enumerate(reserve[slot]):
                    own = flats(seed)
                    h = torch.cond(active[i, j],
                                   lambda h, *ops, seed=seed: branch(seed, ops, h),
                                   lambda h, *ops: h.clone(memory_format=layout), (h, *own))
            elif case == "chained":
                h = chain(h, active[i], reserve[slot], [flats(s) for s in reserve[slot]], 0)
        return host.head(h.mean((2, 3)))

    params = list(host.parameters())
    params += list(live.parameters()) if case == "live" else []
    params += [p for s in SLOTS for seed in reserve[s] for p in seed.parameters()] \
        if case in ("flat", "chained") else []
    keep = torch.ones((), dtype=torch.bool)

    def step(x, y, active):  # type: ignore[no-untyped-def]
        loss = nn.functional.cross_entropy(forward(x, active), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.copy_(torch.where(keep, p - 0.01 * g, p))
        return loss.detach()

    active = torch.zeros(len(SLOTS), len(BLUEPRINTS), dtype=torch.bool)
    active[SLOTS.index("mid"), BLUEPRINTS.index("norm")] = True
    x = torch.randn(64, 1, 16, 16) if digits else torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    compiled = torch.compile(step, fullgraph=True)
    started = time.perf_counter()
    compiled(x, y, active)
    first = time.perf_counter() - started
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        compiled(x, y, active)
        times.append(time.perf_counter() - started)
    return {"first": first, "step": statistics.median(times[10:])}


def _run(model: str, case: str, cache: Path) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / f"{model}-{case}")}
    argv = [sys.executable, "-m", "bench.preallocation_route", "--one", model, case]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print(f"{'model':11}{'case':9}{'step ms':>9}{'vs live':>9}{'first s':>9}")
    with tempfile.TemporaryDirectory(prefix="esper-preallocation-") as directory:
        for model in args.models:
            results = {case: _run(model, case, Path(directory)) for case in CASES}
            for case, result in results.items():
                ratio = result["step"] / results["live"]["step"]
                print(f"{model:11}{case:9}{result['step'] * 1e3:9.2f}{ratio:9.2f}"
                      f"{result['first']:9.1f}")


if __name__ == "__main__":
    main()
