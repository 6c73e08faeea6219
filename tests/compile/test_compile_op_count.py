"""Dormant slots cost nothing: the model's graph holds exactly the bare host's operations.

Op counts are read from the FX graph dynamo hands the backend, so they do not
depend on the backend; the cheapest one is used.
"""

from __future__ import annotations

import torch
from compile_support import build_tiny
from torch._dynamo.testing import CompileCounterWithBackend


def _compiled_ops(fn, *args) -> tuple[int, list[str]]:
    cnt = CompileCounterWithBackend("eager")
    torch.compile(fn, backend=cnt, fullgraph=True)(*args)
    assert cnt.frame_count == 1
    (graph,) = cnt.graphs
    targets = [str(node.target) for node in graph.graph.nodes if "call" in node.op]
    return cnt.op_count, targets


def test_dormant_slots_compile_to_the_bare_host_ops(topology: str) -> None:
    tiny = build_tiny(topology, germinate=False)
    host_ops, host_targets = _compiled_ops(tiny.model.host, tiny.x)
    model_ops, model_targets = _compiled_ops(tiny.model, tiny.x)
    assert host_ops > 0
    assert model_ops == host_ops
    assert model_targets == host_targets


def test_dormant_functional_forward_compiles_to_the_bare_host_ops(topology: str) -> None:
    tiny = build_tiny(topology, germinate=False)
    model, host = tiny.model, tiny.model.host

    def bare(params, buffers, x):
        return torch.func.functional_call(host, (params, buffers), (x,))

    def slotted(params, buffers, states, x):
        return model.functional_forward(params, states, x, buffers)

    host_ops, host_targets = _compiled_ops(
        bare, dict(host.named_parameters()), dict(host.named_buffers()), tiny.x)
    model_ops, model_targets = _compiled_ops(
        slotted, tiny.params(), tiny.buffers(), model.slot_states(), tiny.x)
    assert model_ops == host_ops
    assert model_targets == host_targets
