"""Signed lifecycle commands: HMAC-SHA256 authentication, freshness and replay protection.

A controller outside the training process asks for a lifecycle change by
sending one JSON line ``{"command": {...}, "signature": "<64 hex digits>"}``.
The signature is HMAC-SHA256, under a shared key, of the command's canonical
encoding: the six fields of :data:`FIELDS` (and ``blend_algorithm_id`` when
the command names one) as JSON with sorted keys, separators ``","`` and
``":"``, non-ASCII escaped (so the bytes are ASCII, hence UTF-8) and
``issued_at`` written as a float. A command without ``blend_algorithm_id``
encodes, and so is signed, exactly as before the field existed. The key is at
least :data:`MIN_KEY_BYTES` (16) bytes: a shorter one raises
:class:`~esper.errors.WeakCommandKeyError`.

:class:`CommandVerifier` accepts a line only if it parses, the signature
matches (compared in constant time), the slot is known, the command is fresh
and its nonce is new. Every rejection is returned as a :class:`Verdict` (never
raised) and reported as a ``COMMAND_REJECTED`` telemetry event.

Example::

    key = load_key_from_env()  # ESPER_COMMAND_KEY
    line = sign(LifecycleCommand("prune", "mid", None, "s1", time.time(), "n-1"), key).to_json()
    verdict = CommandVerifier(key, known_slots=frozenset({"mid"})).verify(line)
    if verdict.accepted:
        decision = verdict.command.to_decision()

The package re-exports its public names from :mod:`.wire` (the command and its
JSON line), :mod:`.keys` (the shared key, signing), :mod:`.replay` (the nonce
memory) and :mod:`.verifier` (the checks and the rejection reports).
"""

from __future__ import annotations

from .keys import KEY_ENV as KEY_ENV
from .keys import MIN_KEY_BYTES as MIN_KEY_BYTES
from .keys import load_key_from_env as load_key_from_env
from .keys import sign as sign
from .verifier import DEFAULT_MAX_SKEW_S as DEFAULT_MAX_SKEW_S
from .verifier import RATE_LIMITED as RATE_LIMITED
from .verifier import REASONS as REASONS
from .verifier import CommandVerifier as CommandVerifier
from .verifier import Reason as Reason
from .verifier import Verdict as Verdict
from .verifier import rejection_event as rejection_event
from .wire import FIELDS as FIELDS
from .wire import MAX_LINE_CHARS as MAX_LINE_CHARS
from .wire import MAX_NONCE_CHARS as MAX_NONCE_CHARS
from .wire import OPTIONAL_FIELDS as OPTIONAL_FIELDS
from .wire import LifecycleCommand as LifecycleCommand
from .wire import SignedCommand as SignedCommand

__all__ = ["DEFAULT_MAX_SKEW_S", "FIELDS", "KEY_ENV", "MAX_LINE_CHARS", "MAX_NONCE_CHARS",
           "MIN_KEY_BYTES", "OPTIONAL_FIELDS", "RATE_LIMITED", "REASONS", "CommandVerifier",
           "LifecycleCommand", "Reason", "SignedCommand", "Verdict", "load_key_from_env",
           "rejection_event", "sign"]
