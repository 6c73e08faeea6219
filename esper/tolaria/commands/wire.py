"""The wire format of a signed command: the command, its canonical bytes, its JSON line.

A line is ``{"command": {...}, "signature": "<64 hex digits>"}``; the
signature covers :meth:`LifecycleCommand.canonical_bytes` (see
:mod:`esper.tolaria.commands` for the protocol).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ...errors import MalformedCommandError
from ...tamiyo.decisions import ACTIONS, Action, Decision, check_germination
from ...validation import is_real

FIELDS: tuple[str, ...] = ("action", "slot", "blueprint_id", "seed_id", "issued_at", "nonce")
# Fields a command may leave out (then absent from its encoding, so from what is signed).
OPTIONAL_FIELDS: tuple[str, ...] = ("blend_algorithm_id",)
MAX_LINE_CHARS = 8192  # a signed command is a few hundred characters
MAX_NONCE_CHARS = 128


def _check_text(name: str, value: object, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"LifecycleCommand.{name} must be a string, got {value!r}")
    if not value:
        raise ValueError(f"LifecycleCommand.{name} must not be empty")


@dataclass(frozen=True, slots=True)
class LifecycleCommand:
    """One lifecycle request for one slot, as signed by the controller.

    Attributes:
        action: ``"germinate"``, ``"fossilize"`` or ``"prune"``.
        slot: the slot it concerns.
        blueprint_id: the blueprint to germinate (required for germinate).
        seed_id: the seed to create (required for germinate) or concerned.
        issued_at: when it was issued, in seconds since the epoch (stored as a float).
        nonce: a unique string (at most 128 characters); a nonce is accepted once.
        blend_algorithm_id: the alpha ramp of the seed to germinate (``"linear"``,
            ``"sigmoid"`` or ``"gated"``; germinate only); ``None``: the run's own.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: unknown action, empty string, non-finite time, germinate
            without ids, or a nonce that is too long.
    """

    action: Action
    slot: str
    blueprint_id: str | None
    seed_id: str | None
    issued_at: float
    nonce: str
    blend_algorithm_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; actions are {ACTIONS}")
        _check_text("slot", self.slot)
        _check_text("blueprint_id", self.blueprint_id, optional=True)
        _check_text("seed_id", self.seed_id, optional=True)
        _check_text("nonce", self.nonce)
        if len(self.nonce) > MAX_NONCE_CHARS:
            raise ValueError(f"LifecycleCommand.nonce is longer than {MAX_NONCE_CHARS} characters")
        _check_text("blend_algorithm_id", self.blend_algorithm_id, optional=True)
        check_germination("command", self.action, self.blueprint_id, self.seed_id,
                          self.blend_algorithm_id)
        t = self.issued_at
        if not is_real(t):
            raise TypeError(f"LifecycleCommand.issued_at must be a number, got {t!r}")
        try:
            t = float(t)
        except OverflowError:
            raise ValueError(f"LifecycleCommand.issued_at is too large: {t}") from None
        if not math.isfinite(t):
            raise ValueError(f"LifecycleCommand.issued_at must be finite, got {t}")
        object.__setattr__(self, "issued_at", t)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: :data:`FIELDS`, and each of :data:`OPTIONAL_FIELDS` that is set."""
        data = {name: getattr(self, name) for name in FIELDS}
        data.update({name: getattr(self, name) for name in OPTIONAL_FIELDS
                     if getattr(self, name) is not None})
        return data

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: sorted-key, compact, ASCII-escaped JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)
        return text.encode("utf-8")

    def to_decision(self, reason: str = "command") -> Decision:
        """The controller :class:`Decision` this command carries, tagged ``reason``."""
        return Decision(self.action, self.slot, reason, self.blueprint_id, self.seed_id,
                        self.blend_algorithm_id)

    @classmethod
    def from_decision(cls, decision: Decision, issued_at: float | None = None,
                      nonce: str | None = None) -> LifecycleCommand:
        """A command for ``decision``, issued now and with a random nonce unless given."""
        return cls(decision.action, decision.slot, decision.blueprint_id, decision.seed_id,
                   time.time() if issued_at is None else issued_at,
                   secrets.token_hex(16) if nonce is None else nonce,
                   decision.blend_algorithm_id)


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command and its HMAC-SHA256 signature (64 hex digits, stored lower case)."""

    command: LifecycleCommand
    signature_hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.command, LifecycleCommand):
            raise TypeError(f"SignedCommand.command must be a LifecycleCommand, "
                            f"got {type(self.command).__name__}")
        sig = self.signature_hex
        if not isinstance(sig, str) or len(sig) != 64 or not sig.isascii():
            raise ValueError("SignedCommand.signature_hex must be 64 hex digits")
        try:
            bytes.fromhex(sig)
        except ValueError:
            raise ValueError("SignedCommand.signature_hex must be 64 hex digits") from None
        object.__setattr__(self, "signature_hex", sig.lower())

    def to_json(self) -> str:
        """One JSON line (no newline): ``{"command": {...}, "signature": "..."}``."""
        return json.dumps({"command": self.command.to_dict(), "signature": self.signature_hex},
                          sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> SignedCommand:
        """Parse one line written by :meth:`to_json` (surrounding whitespace allowed).

        Raises:
            MalformedCommandError: not a string, too long, not JSON, missing or
                extra keys, wrong types or invalid values, bad signature format.
        """
        if not isinstance(line, str):
            raise MalformedCommandError(f"expected a str, got {type(line).__name__}")
        if len(line) > MAX_LINE_CHARS:
            raise MalformedCommandError(f"line longer than {MAX_LINE_CHARS} characters")
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise MalformedCommandError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != {"command", "signature"}:
            raise MalformedCommandError('expected exactly the keys "command" and "signature"')
        fields = obj["command"]
        if not isinstance(fields, dict) or not set(FIELDS) <= set(fields) \
                or not set(fields) <= {*FIELDS, *OPTIONAL_FIELDS}:
            raise MalformedCommandError(f"command must have the keys {list(FIELDS)} and may "
                                        f"have {list(OPTIONAL_FIELDS)}, no others")
        if any(fields[name] is None for name in OPTIONAL_FIELDS if name in fields):
            raise MalformedCommandError(f"an optional field ({list(OPTIONAL_FIELDS)}) is left "
                                        "out, not null")
        try:
            return cls(LifecycleCommand(**fields), obj["signature"])
        except (TypeError, ValueError) as exc:
            raise MalformedCommandError(str(exc)) from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


__all__ = ["FIELDS", "MAX_LINE_CHARS", "MAX_NONCE_CHARS", "OPTIONAL_FIELDS", "LifecycleCommand",
           "SignedCommand"]
