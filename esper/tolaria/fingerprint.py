"""Digests that ranks compare: of text and bytes, and of named tensors bit for bit.

A digest is 56 bits, so it fits an int64 with room for a tag in the top byte
(:mod:`esper.tolaria.consensus` puts the proposed stage there) and travels in
one integer collective.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor


def fingerprint(*chunks: bytes | str) -> int:
    """A 56-bit digest of ``chunks`` (fits an int64 with room for a tag in the top byte)."""
    digest = hashlib.blake2b(digest_size=7)
    for chunk in chunks:
        digest.update(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "big")


def tensor_fingerprint(tensors: Iterable[tuple[str, Tensor]]) -> int:
    """A digest of named tensors: names, dtypes, shapes and every byte of their values."""
    chunks: list[bytes | str] = []
    for name, tensor in tensors:
        value = tensor.detach().cpu().contiguous()
        chunks += [f"{name}:{value.dtype}:{tuple(value.shape)}",
                   value.reshape(-1).view(torch.uint8).numpy().tobytes()]
    return fingerprint(*chunks)
