"""The trainer's compiled functions: the training step and the isolation probe's arithmetic.

Both compile with ``fullgraph=True`` and static shapes through a
:class:`CompileCounter`, which counts the graphs (a run reports them: one
step graph per topology is the contract) and hands them to the real backend.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from ..ops.isolation import ProbeSquares, probe_squares
from .step import StepFn, train_step

Backend = Callable[[torch.fx.GraphModule, list[Any]], Any]
"""A dynamo backend: a :class:`CompileCounter`, or a test's counting backend."""


class CompileCounter:
    """A dynamo backend that counts the graphs it compiles and hands them on.

    :attr:`seconds` adds up the wall time of the calls (through
    :func:`build_step` or :func:`build_probe`) that compiled a graph: dynamo's
    tracing, the backend's compile and that one call's run.

    Arguments:
        backend: the backend that compiles them (``"inductor"``, ``"aot_eager"``...).
    """

    def __init__(self, backend: str = "inductor") -> None:
        self.graphs = 0
        self.seconds = 0.0
        self.backend = torch._dynamo.lookup_backend(backend)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return self.backend(graph, example_inputs)

    def timed(self, compiled: Callable[..., Any]) -> Callable[..., Any]:
        """``compiled``, adding to :attr:`seconds` the wall time of each call that compiled."""
        @functools.wraps(compiled)
        def call(*args: Any, **kwargs: Any) -> Any:
            graphs, started = self.graphs, time.perf_counter()
            try:
                return compiled(*args, **kwargs)
            finally:
                if self.graphs > graphs:
                    self.seconds += time.perf_counter() - started

        return call


def _compiled(fn: Any, counter: Backend | None) -> Any:
    # Each germinate or prune compiles one more graph for the same code; a long
    # run may see more topologies than dynamo's default limit allows. Shapes are
    # static (full batches only): dynamic=False keeps shapes seen by an earlier
    # compile of the same function (another model, another batch size) from
    # turning this one's graphs dynamic.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    backend = counter if counter is not None else CompileCounter()
    compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
    return backend.timed(compiled) if isinstance(backend, CompileCounter) else compiled


def build_step(compile: bool, counter: Backend | None = None) -> StepFn:
    """The training step, compiled (``fullgraph=True``, static shapes, through ``counter``;
    a fresh inductor :class:`CompileCounter` by default) or eager."""
    return _compiled(train_step, counter) if compile else train_step


def build_probe(compile: bool, counter: Backend | None = None) -> ProbeSquares:
    """The isolation probe's arithmetic, compiled like the step or eager.

    Compiled, it is one small graph per seed (built at the seed's first
    probe). Eagerly, every probe pays the per-op overhead of its dozen small
    operations, which on a small model is a noticeable share of the training
    steps between two probes.
    """
    return _compiled(probe_squares, counter) if compile else probe_squares
