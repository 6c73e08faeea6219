"""Time to result: a whole ``esper grow`` run under each ``--compile`` mode, cold and warm.

Run the table with::

    pytest bench/test_time_to_result.py --benchmark-enable -s

Each mode runs the default ``esper grow`` (digits, 30 epochs; ``ESPER_TTR_EPOCHS``
shortens it) once, in a subprocess with its own run directory, so the wall
time is a user's: interpreter start, imports, data, training, compiles,
checkpoints and the plot. The compile caches are isolated: ``auto`` (the
default, what a user gets) and ``always-cold`` start with empty inductor and
Triton cache directories, ``always-warm`` runs again on the caches
``always-cold`` filled, and ``never`` is ``--compile never`` (eager). From
each run's ``summary.json``: its own wall time, the seconds spent in calls
that compiled, the step and probe graphs, how the step ran (compiled or eager)
and the final accuracy. The table at the end compares each mode with
``never`` against the targets of the issue on compile time (the default run
cold <= 30 s and warm <= 15 s, compiled never slower than eager, within
:data:`NOISE` of it); PASS/MISS is reported, nothing is asserted about speed.
The seeds each run germinated, fossilized and pruned are in the table:
compiled and eager arithmetic may round differently, and a different
lifecycle costs a different number of compiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# mode -> the --compile option it runs with (the cache directory decides cold or warm)
MODES = {"auto": "auto", "always-cold": "always", "always-warm": "always", "never": "never"}
# seconds end to end on a 2-core CPU: the default run, whose caches are empty, must meet
# the warm target too; --compile always is measured against the cold and warm ones
TARGETS = {"auto": 15.0, "always-cold": 30.0, "always-warm": 15.0}
NOISE = 1.05  # "never slower than eager": within 5% of the eager run (one run each)
EPOCHS = os.environ.get("ESPER_TTR_EPOCHS")


@dataclass(frozen=True)
class Run:
    """One whole run: the process's wall time and what its summary says."""

    process_seconds: float
    summary: dict


RESULTS: dict[str, Run] = {}


def grow(out: Path, cache: Path, mode: str) -> Run:
    """The default ``esper grow`` with ``--compile MODES[mode]`` in a subprocess whose compile
    caches live in ``cache`` (fresh for ``auto`` and ``always-cold``)."""
    caches = cache / ("auto" if mode == "auto" else "always")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
           "TRITON_CACHE_DIR": str(caches / "triton")}
    argv = [sys.executable, "-m", "esper", "grow", "--out", str(out), "--quiet",
            "--compile", MODES[mode]]
    argv += ["--epochs", EPOCHS] if EPOCHS else []
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return Run(seconds, json.loads((out / "summary.json").read_text()))


def _verdict(mode: str, run: Run) -> str:
    eager = RESULTS.get("never")
    target = TARGETS.get(mode)
    checks = [] if target is None else [run.process_seconds <= target]
    if eager is not None and mode != "never":
        checks.append(run.process_seconds <= eager.process_seconds * NOISE)
    return "" if not checks else "PASS" if all(checks) else "MISS"


def _table() -> str:
    eager = RESULTS.get("never")
    lines = [f"{'mode':12}{'wall s':>9}{'in run s':>10}{'compile s':>11}{'probe s':>9}{'graphs':>8}"
             f"{'step':>9}{'acc %':>8}{'seeds':>8}{'vs eager':>10}{'target s':>10}{'':>6}"]
    for mode, run in RESULTS.items():
        s = run.summary
        ratio = run.process_seconds / eager.process_seconds if eager else float("nan")
        target = TARGETS.get(mode)
        lines.append(f"{mode:12}{run.process_seconds:9.1f}{s['wall_seconds']:10.1f}"
                     f"{s.get('compile_seconds', 0.0):11.1f}"
                     f"{s.get('probe_compile_seconds', 0.0):9.1f}"
                     f"{s['compile_count']:>4} + {s['probe_compile_count']}"
                     f"{s.get('training', {}).get('step', ''):>9}"
                     f"{s['final_accuracy']:8.2f}"
                     f"{s['seeds_germinated']:>4}/{s['seeds_fossilized']}/{s['seeds_pruned']}"
                     f"{ratio:10.2f}"
                     f"{'' if target is None else f'{target:.0f}':>10}{_verdict(mode, run):>6}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cache() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="esper-ttr-") as directory:
        yield Path(directory)
    if RESULTS:
        print(f"\n\nTime to result: the default esper grow (digits, {EPOCHS or 'all'} epochs) "
              "in a fresh process; wall s is the process, in run s the summary's, compile s "
              "the calls that compiled; step: how auto's choice ran it; seeds "
              "germinated/fossilized/pruned; auto and always-cold start with empty compile "
              "caches, always-warm reuses always-cold's\n"
              + _table())


@pytest.mark.parametrize("mode", MODES)
def test_time_to_result(benchmark, cache: Path, mode: str) -> None:
    if benchmark.disabled:
        pytest.skip("whole runs take minutes: run with --benchmark-enable")
    out = cache / f"run-{mode}"
    run = benchmark.pedantic(grow, args=(out, cache, mode), rounds=1, iterations=1)
    RESULTS[mode] = run
    benchmark.extra_info.update(process_seconds=run.process_seconds,
                                compile_seconds=run.summary.get("compile_seconds", 0.0),
                                graphs=run.summary["compile_count"],
                                probe_graphs=run.summary["probe_compile_count"],
                                step=run.summary["training"]["step"])
    compiled = run.summary["training"]["step"] == "compiled"
    assert compiled == (run.summary["compile_count"] > 0)
    if MODES[mode] != "auto":
        assert compiled == (MODES[mode] == "always")
