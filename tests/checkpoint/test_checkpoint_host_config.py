"""Hosts rebuilt from their JSON config (what a checkpoint stores of its host)."""

from __future__ import annotations

import json

import pytest
import torch

from esper.nn.host import CNNHost, TransformerHost, build_host

HOSTS = {
    "cnn default": lambda: CNNHost(),
    "cnn custom": lambda: CNNHost(num_classes=5, n_blocks=2, base_channels=4, pool_layers=1,
                                  memory_format=torch.contiguous_format, in_channels=1),
    "transformer": lambda: TransformerHost(vocab_size=32, n_embd=16, n_head=2, n_layer=4,
                                           block_size=8, dropout=0.1, num_segments=2),
}


@pytest.mark.parametrize("name", list(HOSTS))
def test_config_is_json_and_rebuilds_the_same_host(name: str) -> None:
    host = HOSTS[name]()
    config = host.config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = build_host(config)
    assert type(rebuilt) is type(host) and rebuilt.config() == config
    assert rebuilt.injection_specs() == host.injection_specs()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in host.state_dict().items()}


def test_cnn_config_spells_the_memory_format() -> None:
    assert CNNHost().config()["memory_format"] == "channels_last"
    assert build_host({"kind": "cnn"}).memory_format == torch.channels_last
    assert CNNHost().config()["pool_layers"] == 3  # resolved, not None


@pytest.mark.parametrize(("config", "message"), [
    ({"kind": "rnn"}, r"unknown host kind 'rnn'"),
    ({"n_blocks": 2}, r"unknown host kind None"),
    (["cnn"], r"unknown host kind \['cnn'\]"),
    ({"kind": "cnn", "depth": 3}, r"unknown cnn host argument 'depth'"),
    ({"kind": "cnn", "n_blocks": True}, r"'n_blocks' must be int, got True"),
    ({"kind": "cnn", "n_blocks": 2.0}, r"'n_blocks' must be int, got 2.0"),
    ({"kind": "cnn", "memory_format": "nhwc"}, r"unknown memory_format 'nhwc'"),
    ({"kind": "cnn", "pool_layers": 9}, r"pool_layers must lie in \[0, 3\]"),
    ({"kind": "transformer"}, r"missing 1 required positional argument: 'vocab_size'"),
    ({"kind": "transformer", "vocab_size": 0}, r"'vocab_size' must be >= 1, got 0"),
    ({"kind": "transformer", "vocab_size": 8, "dropout": 1.5}, r"dropout must lie in \[0, 1\)"),
    ({"kind": "transformer", "vocab_size": 8, "n_embd": 10, "n_head": 4}, r"must divide"),
])
def test_bad_configs_raise_value_error(config: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_host(config)  # type: ignore[arg-type]
