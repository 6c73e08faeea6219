"""Signed lifecycle commands: signing, parsing, verification, replay and telemetry."""

from __future__ import annotations

import dataclasses
import hmac
import json
import math

import pytest

from esper.errors import MalformedCommandError, WeakCommandKeyError
from esper.leyline import EVENT_PAYLOAD_FIELDS, EventType, TelemetryEvent
from esper.nn.slot import TelemetryCallbackWarning
from esper.tamiyo import Decision
from esper.tolaria.commands import (
    FIELDS,
    MAX_LINE_CHARS,
    MIN_KEY_BYTES,
    CommandVerifier,
    LifecycleCommand,
    SignedCommand,
    Verdict,
    load_key_from_env,
    sign,
)

KEY = b"k" * 32
T0 = 1_000_000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cmd(nonce: str = "n-1", issued_at: float = T0, action: str = "germinate",
        slot: str = "mid") -> LifecycleCommand:
    return LifecycleCommand(action, slot, "conv3x3", "s1", issued_at, nonce)  # type: ignore[arg-type]


def line(nonce: str = "n-1", issued_at: float = T0, key: bytes = KEY, **kw) -> str:
    return sign(cmd(nonce, issued_at, **kw), key).to_json()


@pytest.fixture
def setup():
    clock, events = Clock(), []
    verifier = CommandVerifier(KEY, clock=clock, known_slots=frozenset({"mid", "top"}),
                               on_event=events.append)
    return verifier, clock, events


def test_valid_command_is_accepted_and_round_trips(setup):
    verifier, _, events = setup
    text = line()
    assert "\n" not in text and SignedCommand.from_json(text) == sign(cmd(), KEY)
    verdict = verifier.verify(text)
    assert verdict == Verdict(True, "ok", cmd())
    assert verifier.nonce_count == 1 and events == []
    assert verifier.verify(sign(cmd("n-2"), KEY)).accepted  # a parsed command works too


def test_replayed_nonce_is_rejected(setup):
    verifier, clock, _ = setup
    assert verifier.verify(line()).accepted
    clock.now += 1
    assert verifier.verify(line()).reason == "replayed_nonce"
    # A fresh signature over other fields does not make a used nonce new.
    assert verifier.verify(line(issued_at=T0 + 1, action="prune")).reason == "replayed_nonce"


def test_wrong_key_is_bad_signature(setup):
    verifier, _, _ = setup
    assert verifier.verify(line(key=b"other")) == Verdict(False, "bad_signature", None)
    assert verifier.nonce_count == 0


@pytest.mark.parametrize("field, value", [
    ("action", "prune"), ("slot", "top"), ("blueprint_id", "other"), ("seed_id", "s2"),
    ("issued_at", T0 + 1), ("nonce", "n-2")])
def test_tampering_any_field_breaks_the_signature(setup, field, value):
    verifier, _, _ = setup
    obj = json.loads(line())
    obj["command"][field] = value
    assert verifier.verify(json.dumps(obj)).reason == "bad_signature"


def test_tampering_the_signature_is_rejected(setup):
    verifier, _, _ = setup
    obj = json.loads(line())
    sig = obj["signature"]
    obj["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert verifier.verify(json.dumps(obj)).reason == "bad_signature"
    obj["signature"] = sig.upper()  # case is not significant
    assert verifier.verify(json.dumps(obj)).accepted


def test_unknown_slot(setup):
    verifier, _, _ = setup
    assert verifier.verify(line(slot="nowhere")).reason == "unknown_slot"
    assert CommandVerifier(KEY, clock=Clock()).verify(line(slot="nowhere")).accepted


def test_stale_and_future(setup):
    verifier, clock, _ = setup
    clock.now = T0 + 30.0  # exactly freshness_s old: still fresh
    assert verifier.verify(line("a")).accepted
    clock.now = T0 + 30.001
    assert verifier.verify(line("b")).reason == "stale"
    assert verifier.verify(line("c", issued_at=clock.now + 5.0)).accepted  # within skew
    assert verifier.verify(line("d", issued_at=clock.now + 5.1)).reason == "future"


def test_freshness_is_tunable_and_never_revives_forgotten_nonces(setup):
    verifier, clock, _ = setup
    assert verifier.freshness_s == 30.0
    for bad in (0, -1, float("nan"), float("inf"), True, "30"):
        with pytest.raises(ValueError):
            verifier.freshness_s = bad
    assert verifier.verify(line("a")).accepted
    clock.now = T0 + 10
    verifier.freshness_s = 5
    assert verifier.verify(line("b")).reason == "stale" and verifier.nonce_count == 0
    verifier.freshness_s = 60  # "a" is forgotten; widening must not let it replay
    assert verifier.verify(line("a")).reason == "stale"
    assert verifier.verify(line("e", issued_at=T0 + 9)).accepted


def test_nonce_memory_stays_bounded_over_a_long_run():
    clock = Clock()
    verifier = CommandVerifier(KEY, freshness_s=30, clock=clock)
    peak = 0
    for i in range(6_000):  # 50 simulated minutes, one command every 0.5 s
        clock.now = T0 + i * 0.5
        assert verifier.verify(line(f"n{i}", issued_at=clock.now)).accepted
        peak = max(peak, verifier.nonce_count)
    assert peak == 61  # the commands of the last 30 s, boundaries included
    clock.now += 3600  # a long idle period: even a rejected call purges
    assert verifier.verify("garbage").reason == "malformed"
    assert verifier.nonce_count == 0


def test_hard_cap_evicts_without_reopening_replay():
    clock = Clock()
    verifier = CommandVerifier(KEY, clock=clock, max_nonces=10)
    for i in range(25):
        assert verifier.verify(line(f"n{i}", issued_at=T0 - 25 + i)).accepted
        assert verifier.nonce_count <= 10
    for i in range(25):  # evicted or remembered, no nonce is accepted twice
        assert not verifier.verify(line(f"n{i}", issued_at=T0 - 25 + i)).accepted
    assert verifier.verify(line("new")).accepted


MALFORMED = [
    "not json", "", "   ", "null", "[]", "42", '"text"', "{}", "{" * 5000,
    json.dumps({"command": cmd().to_dict()}),
    json.dumps({"signature": "0" * 64}),
    json.dumps({"command": cmd().to_dict(), "signature": "0" * 64, "extra": 1}),
    json.dumps({"command": "germinate", "signature": "0" * 64}),
    "x" * (MAX_LINE_CHARS + 1),
]


def _variant(**changes) -> str:
    obj = json.loads(line())
    for key, value in changes.items():
        if key == "signature":
            obj["signature"] = value
        elif value is ...:
            del obj["command"][key]
        else:
            obj["command"][key] = value
    return json.dumps(obj)


MALFORMED += [
    _variant(nonce=...), _variant(issued_at=...), _variant(action=...),
    _variant(extra="x"), _variant(action=1), _variant(action="explode"), _variant(slot=["mid"]),
    _variant(slot=""), _variant(blueprint_id=None), _variant(issued_at="1000000"),
    _variant(issued_at=True), _variant(issued_at=None), _variant(nonce=None), _variant(nonce=7),
    _variant(nonce="n" * 129), _variant(signature="zz" * 32), _variant(signature="ab" * 31),
    _variant(signature=None), _variant(signature=12), _variant(signature="é" * 64),
    line().replace(f'"issued_at":{T0}', '"issued_at":NaN'),
    line().replace(f'"issued_at":{T0}', '"issued_at":1e400'),
    line().replace(f'"issued_at":{T0}', '"issued_at":' + "9" * 400),
]


@pytest.mark.parametrize("raw", [*MALFORMED, None, b"{}", 3.0])
def test_malformed_input_is_a_verdict_not_an_exception(setup, raw):
    verifier, _, events = setup
    assert verifier.verify(raw) == Verdict(False, "malformed", None)
    assert len(events) == 1 and events[0].payload["nonce"] is None


def test_a_rejection_event_for_every_reason(setup):
    verifier, _, events = setup
    assert verifier.verify(line("r")).accepted
    cases = [("malformed", "{", None, None), ("bad_signature", line(key=b"x"), "mid", "n-1"),
             ("unknown_slot", line(slot="far"), "far", "n-1"),
             ("replayed_nonce", line("r"), "mid", "r"),
             ("future", line(issued_at=T0 + 60), "mid", "n-1"),
             ("stale", line(issued_at=T0 - 60), "mid", "n-1")]
    for reason, raw, slot, nonce in cases:
        assert verifier.verify(raw).reason == reason
        event = events[-1]
        assert isinstance(event, TelemetryEvent) and event.type is EventType.COMMAND_REJECTED
        assert set(event.payload) == set(EVENT_PAYLOAD_FIELDS[EventType.COMMAND_REJECTED])
        assert (event.payload["reason"], event.payload["slot"], event.payload["nonce"]) == (
            reason, slot, nonce)
        assert isinstance(event.payload["detail"], str) and event.payload["detail"]
        assert event.slot_id == (slot or "")
        event.to_dict()
    assert len(events) == len(cases)
    assert "freshness window 30.0s" in events[-1].payload["detail"]


def test_a_failing_callback_warns_and_the_rejection_stands():
    def boom(event: TelemetryEvent) -> None:
        raise RuntimeError("sink down")
    verifier = CommandVerifier(KEY, clock=Clock(), on_event=boom)
    with pytest.warns(TelemetryCallbackWarning, match="sink down"):
        assert verifier.verify("nope").reason == "malformed"


def test_signatures_are_compared_with_compare_digest(setup, monkeypatch):
    verifier, _, _ = setup
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)
    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert verifier.verify(line("a")).accepted
    assert verifier.verify(line("b", key=b"wrong")).reason == "bad_signature"
    assert calls == [(bytes, bytes), (bytes, bytes)]


@pytest.mark.parametrize("key", [b"", "text", bytearray(b"k"), None])
def test_key_must_be_non_empty_bytes(key):
    with pytest.raises(ValueError):
        CommandVerifier(key)
    with pytest.raises(ValueError):
        sign(cmd(), key)


@pytest.mark.parametrize("kw", [{"max_nonces": 0}, {"freshness_s": 0}, {"max_skew_s": -1}])
def test_verifier_arguments_are_checked(kw):
    with pytest.raises(ValueError):
        CommandVerifier(KEY, **kw)


def test_command_validation_and_canonical_encoding():
    with pytest.raises(ValueError):
        cmd(action="explode")
    with pytest.raises(ValueError):
        LifecycleCommand("germinate", "mid", None, "s1", T0, "n")
    with pytest.raises(TypeError):
        LifecycleCommand("prune", "mid", None, "s1", True, "n")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LifecycleCommand("prune", "mid", None, "s1", float("inf"), "n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd().nonce = "x"  # type: ignore[misc]
    c = LifecycleCommand("prune", "mid", None, None, 5, "n")
    assert c.issued_at == 5.0 and isinstance(c.issued_at, float)
    assert c.canonical_bytes() == (b'{"action":"prune","blueprint_id":null,"issued_at":5.0,'
                                   b'"nonce":"n","seed_id":null,"slot":"mid"}')
    assert tuple(c.to_dict()) == FIELDS
    with pytest.raises(MalformedCommandError):
        SignedCommand.from_json("[]")
    with pytest.raises(ValueError):
        SignedCommand(c, "xyz")


def test_decision_conversion():
    decision = cmd().to_decision("remote")
    assert decision == Decision("germinate", "mid", "remote", "conv3x3", "s1")
    back = LifecycleCommand.from_decision(decision, issued_at=T0, nonce="n-1")
    assert back == cmd()
    fresh = LifecycleCommand.from_decision(Decision("prune", "mid", "stalled", seed_id="s1"))
    assert len(fresh.nonce) == 32 and fresh.to_decision().action == "prune"


def test_load_key_from_env(monkeypatch):
    monkeypatch.delenv("ESPER_COMMAND_KEY", raising=False)
    with pytest.raises(ValueError, match="ESPER_COMMAND_KEY is unset or empty"):
        load_key_from_env()
    monkeypatch.setenv("ESPER_COMMAND_KEY", "")
    with pytest.raises(ValueError, match="unset or empty"):
        load_key_from_env()
    monkeypatch.setenv("ESPER_COMMAND_KEY", "s3cret text, long")
    assert load_key_from_env() == b"s3cret text, long"
    monkeypatch.setenv("MY_KEY", "hex:00ff10" + "ab" * 13)
    assert load_key_from_env("MY_KEY") == b"\x00\xff\x10" + b"\xab" * 13
    for bad in ("hex:zz", "hex:"):
        monkeypatch.setenv("MY_KEY", bad)
        with pytest.raises(ValueError, match="MY_KEY"):
            load_key_from_env("MY_KEY")


@pytest.mark.parametrize("value", ["s", "fifteen bytes!!", "hex:00", "hex:" + "ab" * 15])
def test_keys_shorter_than_16_bytes_are_refused_at_start(monkeypatch, value):
    monkeypatch.setenv("ESPER_COMMAND_KEY", value)
    with pytest.raises(WeakCommandKeyError, match=r"ESPER_COMMAND_KEY: the key is \d+ bytes, "
                       r"at least 16 are needed .*openssl rand -hex 32"):
        load_key_from_env()
    key = value.encode() if not value.startswith("hex:") else bytes.fromhex(value[4:])
    with pytest.raises(WeakCommandKeyError, match=f"the command key is {len(key)} bytes"):
        CommandVerifier(key)
    assert isinstance(WeakCommandKeyError("x"), ValueError)


def test_a_16_byte_key_is_enough():
    assert MIN_KEY_BYTES == 16
    verifier = CommandVerifier(b"k" * 16, clock=Clock())
    assert verifier.verify(line(key=b"k" * 16)).accepted


def test_replay_memory_survives_state_and_restore(setup):
    verifier, clock, _ = setup
    assert verifier.state() == {"horizon": None, "nonces": []}
    assert verifier.verify(line("a")).accepted and verifier.verify(line("b", T0 + 1)).accepted
    state = json.loads(json.dumps(verifier.state()))  # through a checkpoint's JSON
    assert state == {"horizon": T0 - 30.0, "nonces": [[T0, "a"], [T0 + 1, "b"]]}

    clock.now = T0 + 10  # the run resumed 10 s later, still inside the freshness window
    events: list = []
    resumed = CommandVerifier(KEY, clock=clock, on_event=events.append)
    resumed.restore(state)
    assert resumed.nonce_count == 2
    assert resumed.verify(line("a")) == Verdict(False, "replayed_nonce", None)
    assert resumed.verify(line("b", T0 + 1)).reason == "replayed_nonce"
    assert resumed.verify(line("c", T0 + 2)).accepted
    assert [e.payload["reason"] for e in events] == ["replayed_nonce", "replayed_nonce"]
    # Without the restored memory the same lines would be accepted again (the defect).
    assert CommandVerifier(KEY, clock=clock).verify(line("a")).accepted


def test_restore_keeps_the_horizon_and_the_cap():
    clock = Clock(T0)
    verifier = CommandVerifier(KEY, clock=clock, max_nonces=2)
    # A horizon ahead of this clock (the clock stepped back): older commands stay stale.
    verifier.restore({"horizon": T0 + 5, "nonces": [[T0 + 4, "old"], [T0 + 6, "x"],
                                                   [T0 + 7, "y"], [T0 + 8, "z"]]})
    assert verifier.state() == {"horizon": math.nextafter(T0 + 6, math.inf),
                                "nonces": [[T0 + 7, "y"], [T0 + 8, "z"]]}
    assert verifier.verify(line("new", T0 + 3)).reason == "stale"


@pytest.mark.parametrize("state", [
    None, [], {"horizon": None}, {"horizon": "0", "nonces": []},
    {"horizon": float("inf"), "nonces": []}, {"horizon": None, "nonces": {}},
    {"horizon": None, "nonces": [[T0]]}, {"horizon": None, "nonces": [[T0, ""]]},
    {"horizon": None, "nonces": [["n", T0]]}, {"horizon": None, "nonces": [[10**400, "n"]]},
    {"horizon": None, "nonces": [[T0, "n" * 129]]}, {"horizon": True, "nonces": []},
])
def test_restore_refuses_a_malformed_state_and_changes_nothing(setup, state):
    verifier, _, _ = setup
    assert verifier.verify(line("a")).accepted
    before = verifier.state()
    with pytest.raises(ValueError, match="verifier"):
        verifier.restore(state)
    assert verifier.state() == before
