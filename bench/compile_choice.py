"""What compiling the training step costs and saves on this machine: the measurements behind
``--compile auto`` (see ``esper/tolaria/compile_policy.py``).

Run it with::

    python -m bench.compile_choice            # about 5 minutes on a 2-core CPU
    python -m bench.compile_choice --threads 2 --models digits

For each model, thread count and backend, a fresh process builds the model
with a ``norm`` seed in TRAINING, runs the product step once (timed: for a
compiled backend that is the compile) and then 40 more (the median is the
step). ``inductor`` runs twice: ``cold`` on an empty inductor cache, ``warm``
on the cache cold filled. The table prints the step time, the first call, and
how many eager seconds of steps one compile must be set against to pay for
itself (``break-even``: the compile over the time it saves per step, times
the eager step). Models: ``digits``, the CNN ``esper grow`` trains by
default (``base_channels=4``, 1x16x16), and ``cifar``, the default
``CNNHost`` on 3x32x32 (``--task cifar10``); batch 64, SGD.
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

MODELS = ("digits", "cifar")
BACKENDS = ("eager", "aot_eager", "inductor-cold", "inductor-warm")
STEPS = 40


def measure(model_name: str, backend: str, threads: int) -> dict[str, float]:
    """In this process: the first step's seconds and the median of the next :data:`STEPS`."""
    import torch

    torch.set_num_threads(threads)
    from esper.nn.host import CNNHost
    from esper.nn.model import MorphogeneticModel
    from esper.optim import OptimizerState, SGDConfig
    from esper.tolaria.compiled import CompileCounter, build_step
    from esper.tolaria.inputs import StepInputs
    from esper.tolaria.step import DEFAULT_OPTIONS

    torch.manual_seed(0)
    digits = model_name == "digits"
    host = CNNHost(in_channels=1, base_channels=4) if digits else CNNHost()
    model = MorphogeneticModel(host, slots=("early", "mid", "late"))
    model.germinate_seed("norm", "bench", slot="mid")
    model.seed_slots["mid"].advance_stage("TRAINING")
    size = (64, 1, 16, 16) if digits else (64, 3, 32, 32)
    x, y = torch.randn(size), torch.randint(0, 10, (64,))
    inputs = StepInputs.of(model, OptimizerState(SGDConfig(lr=0.01)).synced(model))
    compiled = backend != "eager"
    counter = CompileCounter(backend.split("-")[0]) if compiled else None
    step = build_step(compiled, counter)
    started = time.perf_counter()
    step(model, inputs, x, y, DEFAULT_OPTIONS)
    first = time.perf_counter() - started
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        step(model, inputs, x, y, DEFAULT_OPTIONS)
        times.append(time.perf_counter() - started)
    return {"first": first, "step": statistics.median(times)}


def _run(model: str, backend: str, threads: int, cache: Path) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / f"{model}-{threads}")}
    argv = [sys.executable, "-m", "bench.compile_choice", "--one", model, backend, str(threads)]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(models: list[str], threads: list[int]) -> str:
    """Every measurement, one fresh process each, as a text table."""
    lines = [f"{'model':8}{'threads':>8}  {'backend':15}{'step ms':>9}{'first s':>9}"
             f"{'saves ms':>10}{'break-even s':>14}"]
    with tempfile.TemporaryDirectory(prefix="esper-compile-choice-") as directory:
        for model in models:
            for count in threads:
                eager = None
                for backend in BACKENDS:
                    result = _run(model, backend, count, Path(directory))
                    eager = result if backend == "eager" else eager
                    assert eager is not None
                    saves = eager["step"] - result["step"]
                    even = (f"{result['first'] / saves * eager['step']:14.0f}"
                            if backend != "eager" and saves > 0 else
                            f"{'never' if backend != 'eager' else '':>14}")
                    lines.append(f"{model:8}{count:>8}  {backend:15}{result['step'] * 1e3:9.2f}"
                                 f"{result['first']:9.1f}{saves * 1e3:10.2f}{even}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "BACKEND", "THREADS"),
                        help=argparse.SUPPRESS)  # one measurement, in the child process
    args = parser.parse_args()
    if args.one:
        model, backend, threads = args.one
        print(json.dumps(measure(model, backend, int(threads))))
        return
    print(table(args.models, args.threads))


if __name__ == "__main__":
    main()
