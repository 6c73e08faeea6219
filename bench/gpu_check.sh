#!/usr/bin/env bash
# One GPU check of Esper: kernels, a CUDA run, the step's graph count and the step benchmarks.
#
#   bench/gpu_check.sh        (PYTHON=... to use another interpreter than .venv/bin/python;
#                              PARTS="2 3" to run only those parts)
#
# Needs a CUDA machine; without CUDA it stops at once with exit status 2. Every part runs
# under its own timeout and the whole stays under TOTAL_SECONDS (8 minutes); a part that
# fails or times out is reported and the next one runs. At the end, a table of the parts
# (PASS, FAIL or TIMEOUT and seconds); exit status 0 only if every part passed.
#
# What each part prints, and what passes:
#
# 0. Environment: GPU name, torch, CUDA and Triton versions.
#
# 1. Norm kernels (python -m bench.gpu_norms), two tables.
#    Correctness: per input set (1000 small gradients; four 4M-element tensors) and dtype
#    (float32, bfloat16, float16), the largest relative error against the float64
#    reference of the Triton kernels (writing into NaN-poisoned buffers) and of the torch
#    path. PASS when every error is <= 1e-5, the kernel tests' tolerance (float32
#    accumulation: expect 1e-8..1e-6); NaN means a slot the kernels never wrote.
#    Throughput (float32): ms and GB/s (bytes read / median time) of the dispatch
#    ("esper (triton)"), the grouped call the step makes, the torch path, foreach_norm
#    and a Python loop, and of "copy" (Tensor.copy_ of the same bytes, read plus
#    written). "of copy" is each GB/s over the copy's: the 4x4M Triton row should come
#    close to the copy (the small set is launch-bound and cache-resident). Informative.
#
# 2. esper grow --device cuda --precision bf16 --epochs 3 --compile always --quiet into a
#    fresh directory:
#    its per-epoch lines and summary table, then summary.json's figures (final accuracy,
#    graphs compiled, seeds, wall time). Passes when the run exits 0, ran 3 epochs, the
#    accuracy is finite and the step compiled at least one graph and at most one per
#    topology (1 + seeds germinated + seeds pruned), and summary.json's "training" says
#    it trained on cuda in bf16 with the step compiled (--compile always: auto would train a
#    run this short eagerly). Then --resume of that run with --epochs 4 must train the 4th
#    epoch on cuda (the checkpoint, written from CUDA tensors, loads back onto the GPU).
#
# 3. The compiled step's graph count on CUDA: a Trainer on digits (bf16, adamw, cosine,
#    2 epochs, 256 samples) runs two epochs. Prints the graphs compiled, the topologies
#    trained (distinct parameter sets at each epoch's start, plus seeds pruned mid-epoch
#    for raising), the lifecycle tally and torch.cuda.max_memory_allocated(). Passes when
#    the trainer is on CUDA and graphs == topologies (1 when no seed germinated).
#
# 4. The training-step benchmarks on CUDA (ESPER_BENCH_DEVICE=cuda, pytest
#    --benchmark-enable -s): bench/test_step_optimizers.py's table (ms per step, the
#    training seed's ratio to the bare host per optimizer and precision, each bare step
#    against sgd/fp32's), then bench/test_train_step.py's for the CNN host (ResNet-18
#    cases deselected to fit the time; run them with -k resnet). Each table prints when
#    its module finishes, so a timeout in the second keeps the first. Passes when pytest
#    exits 0: the benchmarks assert a finite loss, trained parameters and one graph per
#    compiled case; speed is reported (PASS/MISS against targets), never asserted.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ESPER_BENCH_DEVICE=cuda

TOTAL_SECONDS=470
NORMS_SECONDS=90
GROW_SECONDS=180
GRAPHS_SECONDS=100

if ! command -v "$PYTHON" >/dev/null; then
    echo "gpu_check: no Python at $PYTHON: make the venv (README, Set-up) or set PYTHON" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: CUDA is not available to $PYTHON: run this on a CUDA machine" >&2
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)' >&2 || true
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/esper-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export ESPER_CHECK_DIR="$WORK"
DEADLINE=$((SECONDS + TOTAL_SECONDS))
VERDICTS=()
FAILED=0

# run_part TITLE MAX_SECONDS COMMAND...: run COMMAND under the smaller of MAX_SECONDS and
# the time left, and record its verdict.
run_part() {
    local title=$1 cap=$2 left=$((DEADLINE - SECONDS))
    shift 2
    if [[ -n ${PARTS:-} && " $PARTS " != *" ${title%%.*} "* ]]; then
        return 0
    fi
    local limit=$((cap < left ? cap : left)) started=$SECONDS status=0 verdict=PASS
    printf '\n=== %s (timeout %ss) ===\n' "$title" "$limit"
    if ((limit <= 0)); then
        verdict="SKIPPED (no time left)"
    else
        timeout --kill-after=10 "$limit" "$@" || status=$?
        if ((status == 124 || status == 137)); then
            verdict="TIMEOUT after ${limit}s"
        elif ((status != 0)); then
            verdict="FAIL (exit $status)"
        fi
    fi
    [[ $verdict == PASS ]] || FAILED=1
    VERDICTS+=("$(printf '%-36s %-24s %5ss' "$title" "$verdict" $((SECONDS - started)))")
}

printf '=== 0. environment ===\n'
"$PYTHON" -c 'import importlib.metadata as metadata, torch
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| triton", metadata.version("triton"))'

run_part "1. norm kernels" "$NORMS_SECONDS" "$PYTHON" -m bench.gpu_norms

run_part "2. esper grow on cuda, bf16" "$GROW_SECONDS" "$PYTHON" - <<'EOF'
import json
import math
import os
import subprocess
import sys
from pathlib import Path

out = Path(os.environ["ESPER_CHECK_DIR"]) / "grow"
subprocess.run([sys.executable, "-m", "esper", "grow", "--device", "cuda", "--precision", "bf16",
                "--epochs", "3", "--compile", "always", "--out", str(out), "--quiet"], check=True)
summary = json.loads((out / "summary.json").read_text())
for key in ("epochs", "final_accuracy", "compile_count", "probe_compile_count",
            "seeds_germinated", "seeds_pruned", "wall_seconds"):
    print(f"{key:20} {summary[key]}")
print(f"{'trained':20} {summary['training']}")
assert summary["training"]["device"].startswith("cuda"), summary["training"]
assert summary["training"]["precision"] == "bf16", summary["training"]
print(f"{'compile_choice':20} {summary['compile_choice']}")
assert summary["training"]["step"] == "compiled", summary["compile_choice"]
topologies = 1 + summary["seeds_germinated"] + summary["seeds_pruned"]
assert summary["epochs"] == 3, summary["epochs"]
assert math.isfinite(summary["final_accuracy"]), summary["final_accuracy"]
assert 1 <= summary["compile_count"] <= topologies, (summary["compile_count"], topologies)
subprocess.run([sys.executable, "-m", "esper", "grow", "--resume", str(out), "--epochs", "4",
                "--quiet"], check=True)
resumed = json.loads((out / "summary.json").read_text())
print(f"{'resumed to epoch':20} {resumed['epochs']} on {resumed['training']['device']}")
assert resumed["epochs"] == 4 and resumed["training"]["device"].startswith("cuda"), resumed
EOF

run_part "3. step graphs on cuda (Trainer)" "$GRAPHS_SECONDS" "$PYTHON" - <<'EOF'
import os
from pathlib import Path

import torch

from esper.data import load_task
from esper.leyline import EventType
from esper.tolaria.config import GrowConfig
from esper.tolaria.trainer import EXCEPTION, Trainer

device = os.environ["ESPER_BENCH_DEVICE"]
config = GrowConfig(device=device, compile="always", precision="bf16", optimizer="adamw",
                    schedule="cosine", epochs=2, limit=256, quiet=True,
                    out=Path(os.environ["ESPER_CHECK_DIR"]) / "trainer")
raised = []  # seeds pruned mid-epoch for raising: the rest of that epoch is a new topology


def sink(record: dict) -> None:
    if (record.get("type") == EventType.SEED_PRUNED.value
            and record["payload"].get("reason") == EXCEPTION):
        raised.append(record["slot_id"])


trainer = Trainer(config, load_task(config.task, limit=config.limit, seed=config.seed), sink)
trained = set()  # the topologies the epochs started on: parameter names
for _ in range(config.epochs):
    trained.add(tuple(name for name, _ in trainer.model.named_parameters()))
    trainer.run_epoch()
trainer.close()
topologies = len(trained) + len(raised)
print(f"device {trainer.device}; graphs compiled {trainer.counter.graphs}; topologies "
      f"trained {topologies}; lifecycle events {trainer.tally}; accuracy "
      f"{trainer.records[-1].val_accuracy:.2f}%")
if trainer.device.type == "cuda":
    print(f"max memory allocated {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
assert trainer.device.type == device, trainer.device
assert trainer.counter.graphs == topologies, (trainer.counter.graphs, topologies)
EOF

run_part "4. training-step benchmarks" "$TOTAL_SECONDS" \
    "$PYTHON" -m pytest bench/test_step_optimizers.py bench/test_train_step.py \
    --benchmark-enable -s -q -p no:cacheprovider -k "not resnet"

printf '\n=== verdicts ===\n'
printf '%s\n' "${VERDICTS[@]}"
exit "$FAILED"
