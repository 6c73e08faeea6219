"""Hosts: shapes, injection points, the segment walk, layout, tying, causality, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from esper.core.state import SlotState
from esper.leyline import SeedStage
from esper.nn.host import CNNHost, TransformerHost
from esper.nn.model import MorphogeneticModel as Model
from esper.nn.protocol import HostProtocol
from esper.ops.formula import slot_forward

CL = torch.channels_last


def small_cnn(**kw) -> CNNHost:
    kw.setdefault("base_channels", 8)
    return CNNHost(**kw).eval()


def small_gpt(**kw) -> TransformerHost:
    torch.manual_seed(0)
    kw = {"vocab_size": 50, "n_embd": 16, "n_head": 2, "n_layer": 3, "block_size": 12, **kw}
    return TransformerHost(**kw).eval()


def test_cnn_default_points_and_shapes() -> None:
    host = CNNHost().eval()
    assert host.injection_specs() == {"early": 32, "mid": 64, "late": 128}
    assert host.segment_names() == ("early", "mid", "late")
    x = torch.randn(2, 3, 32, 32)
    assert host(x).shape == (2, 10)
    sizes = {name: host.forward_to_segment(name, x).shape[2] for name in host.segment_names()}
    assert sizes == {"early": 16, "mid": 8, "late": 4}
    assert host.topology == "cnn" and isinstance(host, HostProtocol)


def test_cnn_other_depths_and_pool_layers() -> None:
    host = small_cnn(n_blocks=5, pool_layers=2, num_classes=7, in_channels=1)
    assert host.injection_specs() == {f"block{i + 1}": 8 * 2**i for i in range(5)}
    x = torch.randn(2, 1, 16, 16)
    assert host.forward_to_segment("block5", x).shape == (2, 128, 4, 4)
    assert host(x).shape == (2, 7)


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_cnn_layout_converted_once_at_entry(memory_format: torch.memory_format) -> None:
    host = small_cnn(memory_format=memory_format)
    x = torch.randn(2, 3, 16, 16)
    for name in host.segment_names():
        assert host.forward_to_segment(name, x).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("make", [small_cnn, small_gpt])
def test_segments_compose_to_forward(make) -> None:
    host = make()
    x = torch.randn(2, 3, 16, 16) if host.topology == "cnn" else torch.randint(0, 50, (2, 12))
    full = host(x)
    names = host.segment_names()
    for i, name in enumerate(names):
        h = host.forward_to_segment(name, x)
        torch.testing.assert_close(host.forward_from_segment(name, h), full, rtol=0, atol=0)
        if i:
            earlier = host.forward_to_segment(names[0], x)
            resumed = host.forward_to_segment(name, earlier, from_segment=names[0])
            torch.testing.assert_close(resumed, h, rtol=0, atol=0)
    with pytest.raises(ValueError, match="backwards"):
        host.forward_to_segment(names[0], h, from_segment=names[-1])
    with pytest.raises(ValueError, match="unknown injection point 'nowhere'"):
        host.forward_to_segment("nowhere", x)


def test_cnn_rejects_bad_input_and_config() -> None:
    with pytest.raises(ValueError, match=r"input \[B, 3, H, W\]"):
        small_cnn()(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="pool_layers"):
        CNNHost(n_blocks=2, pool_layers=3)
    with pytest.raises(ValueError, match="n_blocks"):
        CNNHost(n_blocks=0)
    with pytest.raises(ValueError, match="memory_format"):
        CNNHost(memory_format=torch.preserve_format)


def test_transformer_points_shapes_and_tying() -> None:
    host = small_gpt(n_layer=4, num_segments=2)
    assert host.injection_specs() == {"seg1": 16, "seg2": 16}
    assert small_gpt().segment_names() == ("early", "mid", "late")
    tokens = torch.randint(0, 50, (3, 10))
    assert host(tokens).shape == (3, 10, 50)
    assert host.forward_to_segment("seg1", tokens).shape == (3, 10, 16)
    assert host.lm_head.weight is host.wte.weight
    names = [name for name, _ in host.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names  # counted once
    state = host.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["wte.weight"].data_ptr()
    assert host.topology == "transformer" and isinstance(host, HostProtocol)


def test_transformer_is_causal() -> None:
    host = small_gpt()
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    before, after = host(tokens), host(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_transformer_validates_tokens_and_config() -> None:
    host = small_gpt()
    with pytest.raises(TypeError, match="int64"):
        host(torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="T <= 12"):
        host(torch.zeros(2, 13, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        host(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="n_head"):
        TransformerHost(50, n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="num_segments"):
        TransformerHost(50, n_layer=2, num_segments=3)


def test_slotted_walk_compiles_to_one_graph() -> None:
    """A wrapper-style walk with a slot at ``mid``: fullgraph, zero breaks, one frame."""
    torch._dynamo.reset()
    host, seed = small_cnn(), nn.Conv2d(16, 16, 1)
    state = SlotState.dormant("mid", channels=16).replace(
        stage=SeedStage.TRAINING, blueprint_id="t", seed_id="s",
        alpha=torch.tensor(0.0), b=torch.tensor(1.0), g=torch.tensor(1.0))

    def walk(x: torch.Tensor, state: SlotState) -> torch.Tensor:
        h = x
        for name in host.segment_names():
            h = host.run_segment(name, h)
            if name == "mid":
                h = slot_forward(state, seed, h)
        return host.run_head(h)

    counter = CompileCounterWithBackend("aot_eager")
    x = torch.randn(2, 3, 16, 16)
    out = torch.compile(walk, backend=counter, fullgraph=True)(x, state)
    torch.testing.assert_close(out, host(x))
    assert counter.frame_count == 1


def test_the_bug_reports_import_line_works_in_a_fresh_interpreter() -> None:
    """``from esper.nn.host import CNNHost, MorphogeneticModel`` (the first line of the
    reports in spec/) imports the model itself, first of anything, without a cycle."""
    from esper.nn.host import MorphogeneticModel

    assert MorphogeneticModel is Model
    root = Path(__file__).resolve().parents[2]
    script = ("from esper.nn.host import CNNHost, MorphogeneticModel\n"
              "import esper.nn.model as m\n"
              "assert MorphogeneticModel is m.MorphogeneticModel\n"
              "print(type(MorphogeneticModel(CNNHost(base_channels=4), slots=['mid'])).__name__)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "MorphogeneticModel"
