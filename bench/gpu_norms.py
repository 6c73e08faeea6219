"""The norm kernels on a GPU: correctness per dtype, and throughput next to a copy.

Run: ``python -m bench.gpu_norms`` from the repository root (``ESPER_BENCH_DEVICE``:
``auto`` by default, ``cuda`` or ``cpu``). Triton runs on CUDA, or on the CPU
under ``TRITON_INTERPRET=1``; elsewhere the Triton column reads ``n/a`` and only
the torch path is checked and timed. Exit status 1 when a check fails.

Correctness: the input sets of ``bench/test_norms.py`` (1000 small gradients;
four 4M-element tensors), random, in float32, bfloat16 and float16; per set and
dtype, the largest relative error of a tensor's sum of squares against the
float64 reference of :mod:`kernels.reference`: the Triton kernels writing into
NaN-poisoned output and workspace buffers (as ``tests/kernels`` do, so a slot
left unwritten shows as NaN), and the torch path. PASS within the kernel
tests' relative tolerance.

Throughput, float32: GB/s (bytes read over the median time) of the dispatch
(``esper``: Triton on CUDA), the grouped call the training step makes, the
torch path, and the references of ``bench/test_norms.py`` (``foreach_norm``,
``loop``); ``copy`` is ``Tensor.copy_`` of the same bytes, counted read plus
written: what the memory system moves. ``of copy``: GB/s over the copy's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer

from bench.test_norms import CASES, PROVIDERS
from esper import kernels
from esper.kernels.reference import squared_norms_reference
from esper.tolaria.hardware import resolve_device

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REL_TOLERANCE = 1e-5  # the kernel tests' rtol (tests/kernels/test_squared_norms.py)
MIN_RUN_SECONDS = 0.2  # per timed row
Norms = Callable[[list[torch.Tensor]], torch.Tensor]


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` in this process."""
    try:
        return kernels.resolve_backend("triton", device) == "triton"
    except RuntimeError:
        return False


def triton_poisoned(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's sum of squares by the Triton kernels, written into output and
    workspace buffers filled with NaN beforehand."""
    from esper.kernels._utils import plan_launches  # Triton is optional: imported only to run it
    from esper.kernels.squared_norms import group_squared_norms_triton

    device, sizes = tensors[0].device, [1] * len(tensors)
    slots = max(plan_launches(tensors, sizes).num_slots, 1)
    out = torch.full((len(tensors),), float("nan"), dtype=torch.float32, device=device)
    workspace = torch.full((slots,), float("nan"), dtype=torch.float64, device=device)
    return group_squared_norms_triton(tensors, sizes, out=out, workspace=workspace)


def max_relative_error(sums: torch.Tensor, tensors: list[torch.Tensor]) -> float:
    """The largest relative error of ``sums`` against the float64 reference (NaN stays NaN)."""
    reference = squared_norms_reference(tensors)
    return ((sums.double().cpu() - reference).abs() / reference.abs()).max().item()


def correctness(device: torch.device, triton: bool) -> tuple[list[str], bool]:
    """The correctness table's lines, and whether every check passed."""
    lines = [f"{'inputs':12}{'dtype':10}{'triton err':>12}{'torch err':>12}  verdict"]
    passed = True
    for case, make in CASES.items():
        for dtype in DTYPES:
            torch.manual_seed(0)
            tensors = [t.to(dtype) for t in make(str(device))]
            errors = {"torch": max_relative_error(
                kernels.squared_norms(tensors, backend="torch"), tensors)}
            if triton:
                errors["triton"] = max_relative_error(triton_poisoned(tensors), tensors)
            ok = all(error <= REL_TOLERANCE for error in errors.values())  # False for NaN
            passed &= ok
            triton_cell = f"{errors['triton']:.1e}" if triton else "n/a"
            lines.append(f"{case:12}{str(dtype).removeprefix('torch.'):10}{triton_cell:>12}"
                         f"{errors['torch']:12.1e}  {'PASS' if ok else 'FAIL'}")
    return lines, passed


def median_seconds(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` (torch's Timer: warmed up, the device synchronized)."""
    fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=MIN_RUN_SECONDS).median


def norm_providers(device: torch.device) -> dict[str, Norms]:
    """What is timed: the dispatch, the grouped call, the torch path and test_norms' others."""
    backend = kernels.resolve_backend("auto", device)
    providers: dict[str, Norms] = {
        f"esper ({backend})": PROVIDERS["esper"],
        "esper groups": lambda ts: kernels.group_squared_norms([ts[::2], ts[1::2]]),
    }
    if backend != "torch":
        providers["esper (torch)"] = lambda ts: kernels.squared_norms(ts, backend="torch")
    return {**providers, **{name: fn for name, fn in PROVIDERS.items() if name != "esper"}}


def throughput(device: torch.device) -> list[str]:
    """The throughput table's lines: every provider, then the copy, per input set."""
    lines = [f"{'inputs':12}{'provider':16}{'MB':>9}{'ms':>10}{'GB/s':>9}{'of copy':>9}"]
    for case, make in CASES.items():
        torch.manual_seed(0)
        lines += _throughput_rows(case, make(str(device)), device)
    return lines


def _throughput_rows(case: str, tensors: list[torch.Tensor], device: torch.device) -> list[str]:
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    rows = {name: (nbytes, median_seconds(lambda fn=fn: fn(tensors)))
            for name, fn in norm_providers(device).items()}
    rows["copy"] = (2 * nbytes, median_seconds(lambda: target.copy_(source)))
    copy_rate = rows["copy"][0] / rows["copy"][1] / 1e9
    lines = []
    for name, (moved, seconds) in rows.items():
        rate = moved / seconds / 1e9
        lines.append(f"{case:12}{name:16}{nbytes / 1e6:9.1f}{seconds * 1e3:10.3f}"
                     f"{rate:9.1f}{rate / copy_rate:9.2f}")
    return lines


def main() -> int:
    """Print both tables; 1 when a correctness check failed, else 0."""
    device = resolve_device(os.environ.get("ESPER_BENCH_DEVICE", "auto"))
    triton = triton_runs_on(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Norm kernels on {device} ({name}); Triton {'runs' if triton else 'does not run'} "
          f"here. Relative error against the float64 reference (PASS <= {REL_TOLERANCE:g}):")
    lines, passed = correctness(device, triton)
    print("\n".join(lines))
    print(f"\nThroughput, float32, median of {MIN_RUN_SECONDS:g} s of runs each "
          "(copy: bytes read plus written):")
    print("\n".join(throughput(device)))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
