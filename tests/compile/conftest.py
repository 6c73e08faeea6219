"""Fixtures of the compile-contract tests.

Every test starts and ends with a fresh dynamo cache, so graph counts are the
test's own, and runs on one intra-op thread: the models are tiny, and on a
busy two-core machine a second spinning thread made calls 50x slower. The
helpers live in ``compile_support``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from compile_support import Tiny, build_tiny


@pytest.fixture(autouse=True)
def _fresh_dynamo_one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(threads)


@pytest.fixture(params=["eager", "aot_eager"])
def backend(request: pytest.FixtureRequest) -> str:
    """The dynamo backend behind ``CompileCounterWithBackend``."""
    return request.param


@pytest.fixture(params=["cnn", "transformer"])
def topology(request: pytest.FixtureRequest) -> str:
    """Which host the test model is built on."""
    return request.param


@pytest.fixture
def tiny(topology: str) -> Tiny:
    """A tiny model of ``topology`` with a GERMINATED ``norm`` seed in ``mid``."""
    return build_tiny(topology)
