"""Triton kernels with plain-torch fallbacks, one dispatch function per operation.

``squared_norms`` and ``group_squared_norms`` run Triton on CUDA tensors and
torch on CPU tensors (``backend=`` overrides); Triton is optional: where it
is not installed every device takes the torch path; under ``torch.compile`` they are
the custom ops ``torch.ops.esper.squared_norms`` and
``torch.ops.esper.group_squared_norms``, so they trace without graph breaks.

This package is ``esper.kernels``: the source folder ``kernels/`` is reached as
``esper/kernels`` (a symbolic link in the source tree, real files in the wheel),
and importing it under any other name fails (see :mod:`esper.kernels.ops`).

The kernel module ``kernels/squared_norms.py`` shares its name with the public
function, which is what the attribute ``esper.kernels.squared_norms`` is; reach
the module with ``from esper.kernels.squared_norms import ...`` or through
``sys.modules``.
"""

from .ops import BACKENDS as BACKENDS
from .ops import group_squared_norms as group_squared_norms
from .ops import resolve_backend as resolve_backend
from .ops import squared_norms as squared_norms

__all__ = ["BACKENDS", "group_squared_norms", "resolve_backend", "squared_norms"]
