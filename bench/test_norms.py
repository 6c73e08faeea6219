"""Throughput of sums of squares over many tensors: ours against torch.

Run with ``pytest bench/test_norms.py --benchmark-enable``; without the flag
(the project default) each case runs once as a smoke test. Each case records
in ``extra_info`` the bytes read, the largest relative error against a float64
reference and, when timed, GB/s at the fastest round.
On CUDA a device-to-device copy of the same bytes is the bandwidth ceiling
(its GB/s counts bytes read plus bytes written).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from esper import kernels

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _small(device: str) -> list[torch.Tensor]:
    """1000 small gradients: 64x3x3 convolution filters and 256-vectors, alternating."""
    shapes = [(64, 3, 3), (256,)] * 500
    return [torch.randn(shape, device=device) for shape in shapes]


def _large(device: str) -> list[torch.Tensor]:
    """Four 4M-element tensors."""
    return [torch.randn(4 * 1024 * 1024, device=device) for _ in range(4)]


CASES = {"1000-small": _small, "4x4M": _large}


def _ours(ts: list[torch.Tensor]) -> torch.Tensor:
    return kernels.squared_norms(ts)


def _foreach_norm(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(ts)).square()


def _loop(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.pow(2).sum() for t in ts])


PROVIDERS: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {
    "esper": _ours,
    "foreach_norm": _foreach_norm,
    "loop": _loop,
}


def _run(benchmark, fn: Callable[[], object], device: str, nbytes: int) -> None:
    """Time ``fn`` (synchronized on CUDA) and record bytes and GB/s."""

    def timed() -> object:
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    benchmark(timed)
    benchmark.extra_info["bytes"] = nbytes
    if benchmark.stats:
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats["min"] / 1e9, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_squared_norms_throughput(benchmark, provider: str, case: str, device: str) -> None:
    torch.manual_seed(0)
    ts = CASES[case](device)
    nbytes = sum(t.numel() * t.element_size() for t in ts)
    benchmark.group = f"{case}-{device}"
    fn = PROVIDERS[provider]
    expected = torch.stack([t.double().square().sum() for t in ts])
    error = ((fn(ts).double() - expected).abs() / expected).max().item()
    assert error < 1e-3
    benchmark.extra_info["max_rel_err"] = float(f"{error:.1e}")
    _run(benchmark, lambda: fn(ts), device, nbytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy ceiling is measured on CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_copy_ceiling(benchmark, case: str) -> None:
    ts = CASES[case]("cuda")
    nbytes = sum(t.numel() * t.element_size() for t in ts)
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    benchmark.group = f"{case}-cuda"
    _run(benchmark, lambda: dst.copy_(src), "cuda", 2 * nbytes)
