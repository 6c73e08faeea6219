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
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import MalformedCommandError, WeakCommandKeyError
from ..leyline import EventType, TelemetryEvent
from ..nn.slot import TelemetryCallbackWarning
from ..tamiyo.decisions import ACTIONS, Action, Decision, check_germination
from ..validation import check_finite, check_int, is_finite_real, is_real

Reason = Literal["ok", "bad_signature", "replayed_nonce", "stale", "future", "malformed",
                 "unknown_slot", "seed_mismatch"]
REASONS: tuple[Reason, ...] = ("ok", "bad_signature", "replayed_nonce", "stale", "future",
                               "malformed", "unknown_slot", "seed_mismatch")
# The reason of the one summary event that stands for rejections not reported one by one.
RATE_LIMITED = "rate_limited"
MIN_KEY_BYTES = 16  # a shorter HMAC key can be guessed (a 1-byte key in 256 tries)
FIELDS: tuple[str, ...] = ("action", "slot", "blueprint_id", "seed_id", "issued_at", "nonce")
# Fields a command may leave out (then absent from its encoding, so from what is signed).
OPTIONAL_FIELDS: tuple[str, ...] = ("blend_algorithm_id",)
MAX_LINE_CHARS = 8192  # a signed command is a few hundred characters
MAX_NONCE_CHARS = 128
DEFAULT_MAX_SKEW_S = 5.0  # how far in the future a command may claim to be issued
KEY_ENV = "ESPER_COMMAND_KEY"


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


def _check_key(key: object, minimum: int = 1) -> bytes:
    if not isinstance(key, bytes) or not key:
        raise ValueError("the command key must be non-empty bytes")
    if len(key) < minimum:
        raise WeakCommandKeyError(
            f"the command key is {len(key)} bytes; at least {minimum} are needed (a short key "
            f"can be guessed): use 32 random bytes, e.g. hex:$(openssl rand -hex 32)")
    return key


def _digest(key: bytes, command: LifecycleCommand) -> bytes:
    return hmac.new(key, command.canonical_bytes(), hashlib.sha256).digest()


def sign(command: LifecycleCommand, key: bytes) -> SignedCommand:
    """Sign ``command`` with HMAC-SHA256 under ``key`` (non-empty bytes, else ``ValueError``)."""
    return SignedCommand(command, _digest(_check_key(key), command).hex())


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


def rejection_event(reason: str, detail: str, command: LifecycleCommand | None = None, *,
                    slot: str | None = None, seed_id: str | None = None) -> TelemetryEvent:
    """The ``COMMAND_REJECTED`` event of a command refused for ``reason`` (epoch 0: the
    caller stamps its own). ``slot`` and ``seed_id`` stand in when there is no ``command``."""
    if command is not None:
        slot, seed_id = command.slot, command.seed_id
    return TelemetryEvent(
        EventType.COMMAND_REJECTED, slot_id=slot or "", seed_id=seed_id, epoch=0,
        payload={"reason": reason, "slot": slot,
                 "nonce": None if command is None else command.nonce, "detail": detail})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one verification.

    Attributes:
        accepted: whether the command may be executed.
        reason: ``"ok"`` when accepted, else why it was rejected.
        command: the verified command when accepted, ``None`` otherwise (an
            unauthenticated command is never handed back).
    """

    accepted: bool
    reason: Reason
    command: LifecycleCommand | None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")
        if not (self.accepted == (self.reason == "ok") == (self.command is not None)):
            raise ValueError("a verdict is accepted, 'ok' and carries a command, or none of them")


class CommandVerifier:
    """Checks signed commands: signature, slot, freshness and replay, in that order.

    Arguments:
        key: the shared HMAC key, at least :data:`MIN_KEY_BYTES` bytes (else
            :class:`~esper.errors.WeakCommandKeyError`).
        freshness_s: how old (seconds) a command may be; tunable via :attr:`freshness_s`.
        clock: seconds since the epoch, called once per :meth:`verify`.
        known_slots: if given, commands for other slots are ``"unknown_slot"``.
        on_event: called with a ``COMMAND_REJECTED`` :class:`TelemetryEvent` for
            every rejection (exceptions become :class:`TelemetryCallbackWarning`).
        max_nonces: hard cap on remembered nonces.
        max_skew_s: how far in the future a command may be issued (clock skew).

    Replay protection keeps a *horizon*: commands issued before it are stale.
    Every call raises it to ``now - freshness_s`` and forgets the nonces below
    it, so a nonce is kept only while its command could still be fresh. When
    the cap is hit, the oldest nonce is forgotten and the horizon moves past
    it, so memory stays bounded without ever re-accepting a nonce (fail
    closed). The horizon never moves back: a larger window, or a clock that
    steps back, cannot revive a forgotten nonce. :meth:`state` and
    :meth:`restore` carry the horizon and the remembered nonces across a
    checkpoint, so a resumed run still refuses the commands it accepted.
    """

    def __init__(self, key: bytes, freshness_s: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 known_slots: frozenset[str] | None = None,
                 on_event: Callable[[TelemetryEvent], object] | None = None,
                 max_nonces: int = 100_000, *, max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:
        self._key = _check_key(key, MIN_KEY_BYTES)
        self.freshness_s = freshness_s
        check_int("max_nonces", max_nonces, minimum=1)
        check_finite("max_skew_s", max_skew_s, minimum=0.0)
        self._clock = clock
        self._known_slots = None if known_slots is None else frozenset(known_slots)
        self._on_event = on_event
        self._max_nonces = max_nonces
        self._max_skew_s = float(max_skew_s)
        self._nonces: dict[str, float] = {}  # nonce -> issued_at
        self._heap: list[tuple[float, str]] = []  # (issued_at, nonce), oldest first
        self._horizon = -math.inf
        self._lock = threading.Lock()

    @property
    def freshness_s(self) -> float:
        """How old, in seconds, an accepted command may be (settable, > 0)."""
        return self._freshness_s

    @freshness_s.setter
    def freshness_s(self, value: float) -> None:
        self._freshness_s = check_finite("freshness_s", value, minimum=0.0, strict=True)

    @property
    def nonce_count(self) -> int:
        """How many nonces are remembered now."""
        return len(self._nonces)

    def verify(self, raw: str | SignedCommand, *, report: bool = True) -> Verdict:
        """Check one command line (or parsed command); never raises on bad input.

        Arguments:
            raw: the line, or a parsed command.
            report: whether a rejection is reported through ``on_event`` (a
                caller that rate-limits the reports passes ``False`` and
                summarises with :meth:`report`).

        Returns:
            ``Verdict(True, "ok", command)`` and the nonce recorded, or a
            rejection with nothing recorded.
        """
        with self._lock:
            verdict, command, detail = self._check(raw)
        if not verdict.accepted and report:
            self.report(verdict.reason, detail, command)
        return verdict

    def state(self) -> dict[str, Any]:
        """The replay memory, JSON-ready: the horizon (``None`` before any
        verification) and the remembered ``[issued_at, nonce]`` pairs, oldest first."""
        with self._lock:
            horizon = None if self._horizon == -math.inf else self._horizon
            nonces = sorted([t, n] for n, t in self._nonces.items())
        return {"horizon": horizon, "nonces": nonces}

    def restore(self, state: Any) -> None:
        """Remember again what :meth:`state` returned (merged with what is remembered now).

        The horizon only moves forward, nonces below it are dropped, and the
        cap holds as in :meth:`verify`.

        Raises:
            ValueError: ``state`` is not what :meth:`state` returns; nothing changed.
        """
        if not isinstance(state, dict) or set(state) != {"horizon", "nonces"}:
            raise ValueError('the verifier state must be an object with keys "horizon" and '
                             '"nonces"')
        horizon, pairs = state["horizon"], state["nonces"]
        if horizon is not None and not is_finite_real(horizon):
            raise ValueError(f"the verifier horizon must be a finite number or null, "
                             f"got {horizon!r}")
        if not isinstance(pairs, list):
            raise ValueError("the verifier nonces must be a list of [issued_at, nonce] pairs")
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and is_finite_real(pair[0])
                    and isinstance(pair[1], str) and 0 < len(pair[1]) <= MAX_NONCE_CHARS):
                raise ValueError(f"the verifier nonces must be [issued_at, nonce] pairs (a "
                                 f"finite number, a nonce of 1 to {MAX_NONCE_CHARS} "
                                 f"characters), got {str(pair)[:200]}")
        with self._lock:
            if horizon is not None:
                self._horizon = max(self._horizon, float(horizon))
            for issued_at, nonce in pairs:
                if nonce not in self._nonces:
                    self._remember(nonce, float(issued_at))
            self._forget_below_horizon()

    def _check(self, raw: object) -> tuple[Verdict, LifecycleCommand | None, str]:
        now = float(self._clock())
        if not math.isfinite(now):
            raise ValueError(f"the clock returned {now}")
        self._horizon = max(self._horizon, now - self._freshness_s)
        self._forget_below_horizon()
        if isinstance(raw, SignedCommand):
            signed = raw
        else:
            try:
                signed = SignedCommand.from_json(raw)  # type: ignore[arg-type]
            except MalformedCommandError as exc:
                return Verdict(False, "malformed", None), None, str(exc)
        cmd = signed.command
        if not hmac.compare_digest(_digest(self._key, cmd), bytes.fromhex(signed.signature_hex)):
            return Verdict(False, "bad_signature", None), cmd, "HMAC-SHA256 mismatch"
        if self._known_slots is not None and cmd.slot not in self._known_slots:
            return Verdict(False, "unknown_slot", None), cmd, f"no slot {cmd.slot!r}"
        age = now - cmd.issued_at
        if age < -self._max_skew_s:
            detail = f"issued {-age:.3f}s in the future; allowed skew {self._max_skew_s}s"
            return Verdict(False, "future", None), cmd, detail
        if cmd.issued_at < self._horizon:
            detail = (f"issued {age:.3f}s ago; freshness window {self._freshness_s}s"
                      f"{'' if age > self._freshness_s else ' (replay horizon raised)'}")
            return Verdict(False, "stale", None), cmd, detail
        if cmd.nonce in self._nonces:
            return Verdict(False, "replayed_nonce", None), cmd, "nonce already accepted"
        self._remember(cmd.nonce, cmd.issued_at)
        return Verdict(True, "ok", cmd), cmd, ""

    def _remember(self, nonce: str, issued_at: float) -> None:
        self._nonces[nonce] = issued_at
        heapq.heappush(self._heap, (issued_at, nonce))
        if len(self._nonces) > self._max_nonces:  # hard cap: forget the oldest, fail closed
            oldest, _ = self._heap[0]
            self._horizon = max(self._horizon, math.nextafter(oldest, math.inf))
            self._forget_below_horizon()

    def _forget_below_horizon(self) -> None:
        while self._heap and self._heap[0][0] < self._horizon:
            _, nonce = heapq.heappop(self._heap)
            del self._nonces[nonce]

    def report(self, reason: str, detail: str, command: LifecycleCommand | None = None) -> None:
        """Send a ``COMMAND_REJECTED`` event for ``reason`` to ``on_event`` (if any).

        :meth:`verify` calls it for each rejection it reports; a reader calls it
        for what it refuses itself (an over-long line, a summary of unreported
        rejections, reason :data:`RATE_LIMITED`).
        """
        if self._on_event is None:
            return
        try:
            self._on_event(rejection_event(reason, detail, command))
        except Exception as exc:
            warnings.warn(f"command telemetry callback raised {exc!r}; the rejection stands",
                          TelemetryCallbackWarning, stacklevel=3)
