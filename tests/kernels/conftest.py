"""Set up the Triton interpreter without a GPU.

Without a GPU the Triton tests run the kernels on CPU through the Triton
interpreter. Triton decides interpreter or compiler at its first import (its own
``triton.language`` helpers are built then), so ``TRITON_INTERPRET=1`` is set
here only if nothing has imported Triton yet. When Triton came first (a
whole-suite run where other tests imported ``torch._dynamo``), the in-process
Triton tests skip and ``test_triton_cases_in_a_subprocess`` runs them in a
fresh process started with the interpreter.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    # Left set: parts of Triton imported at the first launch check it again.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "triton_kernel: runs the Triton kernels (CUDA, or the interpreter on CPU)"
    )
