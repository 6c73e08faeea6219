"""Rebuilding a built-in host from its ``config()`` (a checkpoint keeps the config, not code)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..validation import is_int, is_real
from .host import FORMAT_NAMES, CNNHost, TransformerHost

_HOST_ARGS: dict[str, dict[str, type]] = {
    "cnn": {"num_classes": int, "n_blocks": int, "base_channels": int, "pool_layers": int,
            "memory_format": str, "in_channels": int},
    "transformer": {"vocab_size": int, "n_embd": int, "n_head": int, "n_layer": int,
                    "block_size": int, "dropout": float, "num_segments": int},
}


def _has_type(value: object, kind: type) -> bool:
    """Whether ``value`` is a ``kind`` (an int counts as a float; a bool as neither)."""
    if kind is float:
        return is_real(value)
    return is_int(value) if kind is int else isinstance(value, kind)


def build_host(config: dict[str, Any]) -> nn.Module:
    """Rebuild a host from what its :meth:`config` returned (fresh weights).

    Arguments:
        config: ``{"kind": "cnn" | "transformer", **constructor arguments}``;
            omitted arguments take their defaults.

    Returns:
        A new :class:`CNNHost` or :class:`TransformerHost`.

    Raises:
        ValueError: not a dict, an unknown kind, an unknown argument, a value
            of the wrong type, or one the constructor rejects.
    """
    if not isinstance(config, dict) or config.get("kind") not in _HOST_ARGS:
        kind = config.get("kind") if isinstance(config, dict) else config
        raise ValueError(f"unknown host kind {kind!r}; known kinds: {list(_HOST_ARGS)}")
    args = {k: v for k, v in config.items() if k != "kind"}
    types = _HOST_ARGS[config["kind"]]
    for name, value in args.items():
        if name not in types:
            raise ValueError(f"unknown {config['kind']} host argument {name!r}; "
                             f"known: {list(types)}")
        if not _has_type(value, types[name]):
            if not (name == "pool_layers" and value is None):
                raise ValueError(f"{config['kind']} host argument {name!r} must be "
                                 f"{types[name].__name__}, got {value!r}")
    if "memory_format" in args:
        formats = {v: k for k, v in FORMAT_NAMES.items()}
        if args["memory_format"] not in formats:
            raise ValueError(f"unknown memory_format {args['memory_format']!r}; "
                             f"known: {list(formats)}")
        args["memory_format"] = formats[args["memory_format"]]
    if config["kind"] == "transformer":
        for name, value in args.items():
            if name != "dropout" and value < 1:
                raise ValueError(f"transformer host argument {name!r} must be >= 1, got {value}")
        if not 0.0 <= args.get("dropout", 0.0) < 1.0:
            raise ValueError(f"transformer host dropout must lie in [0, 1), got {args['dropout']}")
    try:
        return TransformerHost(**args) if config["kind"] == "transformer" else CNNHost(**args)
    except TypeError as error:  # a required argument is missing
        raise ValueError(f"bad {config['kind']} host config: {error}") from error



__all__ = ["build_host"]
