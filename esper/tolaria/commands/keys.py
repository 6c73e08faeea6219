"""The shared HMAC key of signed commands: loading it, checking it, signing with it."""

from __future__ import annotations

import hashlib
import hmac
import os

from ...errors import WeakCommandKeyError
from .wire import LifecycleCommand, SignedCommand

MIN_KEY_BYTES = 16  # a shorter HMAC key can be guessed (a 1-byte key in 256 tries)
KEY_ENV = "ESPER_COMMAND_KEY"


def check_key(key: object, minimum: int = 1) -> bytes:
    """``key`` if it is non-empty bytes of at least ``minimum`` bytes.

    Raises:
        ValueError: not bytes, or empty.
        WeakCommandKeyError: shorter than ``minimum`` bytes.
    """
    if not isinstance(key, bytes) or not key:
        raise ValueError("the command key must be non-empty bytes")
    if len(key) < minimum:
        raise WeakCommandKeyError(
            f"the command key is {len(key)} bytes; at least {minimum} are needed (a short key "
            f"can be guessed): use 32 random bytes, e.g. hex:$(openssl rand -hex 32)")
    return key


def digest(key: bytes, command: LifecycleCommand) -> bytes:
    """The HMAC-SHA256 of ``command``'s canonical bytes under ``key``."""
    return hmac.new(key, command.canonical_bytes(), hashlib.sha256).digest()


def sign(command: LifecycleCommand, key: bytes) -> SignedCommand:
    """Sign ``command`` with HMAC-SHA256 under ``key`` (non-empty bytes, else ``ValueError``)."""
    return SignedCommand(command, digest(check_key(key), command).hex())


def load_key_from_env(name: str = KEY_ENV) -> bytes:
    """The shared command key from environment variable ``name``.

    The value is either ``hex:`` followed by hex digits (decoded to those
    bytes) or any other text, used verbatim as its UTF-8 bytes. Prefer 32
    random bytes, e.g. ``hex:$(openssl rand -hex 32)``.

    Raises:
        ValueError: the variable is unset or empty, or its ``hex:`` value does
            not decode to at least one byte.
        WeakCommandKeyError: the key is shorter than :data:`MIN_KEY_BYTES` bytes.
    """
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"environment variable {name} is unset or empty; set it to the "
                         f"shared command key (raw text, or 'hex:' and hex digits)")
    if not value.startswith("hex:"):
        key = value.encode("utf-8", "surrogateescape")
    else:
        try:
            key = bytes.fromhex(value[4:])
        except ValueError:
            raise ValueError(f"environment variable {name}: invalid hex after 'hex:'") from None
        if not key:
            raise ValueError(f"environment variable {name}: empty key after 'hex:'")
    if len(key) < MIN_KEY_BYTES:
        raise WeakCommandKeyError(
            f"environment variable {name}: the key is {len(key)} bytes, at least "
            f"{MIN_KEY_BYTES} are needed (a short key can be guessed); set it to 32 random "
            f"bytes: export {name}=\"hex:$(openssl rand -hex 32)\"")
    return key


__all__ = ["KEY_ENV", "MIN_KEY_BYTES", "check_key", "digest", "load_key_from_env", "sign"]
