"""``esper grow --controller external``: signed commands from a file or FIFO."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from esper.checkpoint import CheckpointError, load_checkpoint
from esper.checkpoint.format import document_checksum
from esper.checkpoint.layout import current
from esper.cli import main
from esper.tolaria import external
from esper.tolaria.commands import CommandVerifier, LifecycleCommand, sign
from esper.tolaria.config import GrowConfig
from esper.tolaria.external import MAX_LINE_BYTES, CommandSource, CommandSourceError
from esper.tolaria.run import grow

KEY = b"test-key-0123456789"


def line(action: str, slot: str, nonce: str, *, blueprint: str | None = None,
         seed: str | None = None, issued_at: float | None = None, key: bytes = KEY) -> str:
    command = LifecycleCommand(action, slot, blueprint, seed,
                               time.time() if issued_at is None else issued_at, nonce)
    return sign(command, key).to_json()


def source(path: Path, events: list | None = None, **kw) -> CommandSource:
    verifier = CommandVerifier(KEY, known_slots=frozenset({"early", "mid"}),
                               on_event=None if events is None else events.append)
    return CommandSource(path, verifier, **kw)


def reasons(events: list) -> list[str]:
    return [e.payload["reason"] for e in events]


def test_file_source_reads_new_complete_lines_only(tmp_path):
    path = tmp_path / "commands.jsonl"
    path.write_text("")
    src = source(path)
    assert src.poll() == []
    first = line("germinate", "mid", "n1", blueprint="norm", seed="s1")
    second = line("prune", "mid", "n2", seed="s1")
    with path.open("a") as f:
        f.write(first + "\n\n" + second[:20])  # the second line is still being written
    assert [(d.action, d.slot, d.seed_id, d.reason) for d in src.poll()] == [
        ("germinate", "mid", "s1", "external")]
    with path.open("a") as f:
        f.write(second[20:] + "\n")
    assert [d.action for d in src.poll()] == ["prune"]
    assert src.poll() == []
    src.close()
    src.close()


def test_rejected_lines_give_no_decision_and_are_reported(tmp_path):
    path = tmp_path / "commands.jsonl"
    good = line("germinate", "mid", "n1", blueprint="norm", seed="s1")
    tampered = good.replace('"mid"', '"early"')
    lines = [good, good, tampered, line("prune", "mid", "n3", issued_at=time.time() - 3600),
             line("prune", "mid", "n4", key=b"other-key"), line("prune", "late", "n5"),
             "not json", "x" * 10_000]
    path.write_text("\n".join(lines) + "\n")
    events: list = []
    decisions = source(path, events).poll()
    assert len(decisions) == 1
    assert [e.payload["reason"] for e in events] == [
        "replayed_nonce", "bad_signature", "stale", "bad_signature", "unknown_slot",
        "malformed", "malformed"]


def test_an_over_long_line_is_dropped_without_being_held_whole(tmp_path):
    path = tmp_path / "commands.jsonl"
    good = line("germinate", "mid", "n1", blueprint="norm", seed="s1")
    with path.open("w") as f:
        f.write("x" * 20_000_000 + "\n" + good + "\n" + "y" * (MAX_LINE_BYTES + 1) + "\n")
    events: list = []
    src = source(path, events)
    tracemalloc.start()
    try:
        decisions = src.poll()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # a 20 MB line: never read into memory whole (a chunk is 64 KiB)
    assert [(d.action, d.seed_id) for d in decisions] == [("germinate", "s1")]
    assert reasons(events) == ["malformed", "malformed"]
    assert events[0].payload["detail"] == (f"line longer than {MAX_LINE_BYTES} bytes: dropped "
                                           "up to its newline")
    assert src.offset == path.stat().st_size
    src.close()


def test_a_line_without_a_newline_is_dropped_once_past_the_cap(tmp_path):
    path = tmp_path / "commands.jsonl"
    path.write_text("z" * (3 * MAX_LINE_BYTES))  # still being written, or never ending
    events: list = []
    src = source(path, events)
    assert src.poll() == [] and reasons(events) == ["malformed"]
    with path.open("a") as f:  # the rest of it, then a good line
        f.write("z" * 100_000 + "\n" + line("prune", "mid", "n1") + "\n")
    assert [d.action for d in src.poll()] == ["prune"]
    assert reasons(events) == ["malformed"]  # the same line is not reported twice
    assert src.offset == path.stat().st_size


def test_rejection_events_are_rate_limited_per_poll(tmp_path):
    path = tmp_path / "commands.jsonl"
    junk = [f"junk {i}" for i in range(1000)]
    bad_key = [line("prune", "mid", f"k{i}", key=b"another-key-0123456") for i in range(5)]
    path.write_text("\n".join([*junk, *bad_key, line("prune", "mid", "n1")]) + "\n")
    events: list = []
    src = source(path, events, max_reports=20)
    assert [d.action for d in src.poll()] == ["prune"]
    assert reasons(events) == ["malformed"] * 20 + ["rate_limited"]
    assert events[-1].payload["detail"] == ("985 more rejected lines this poll, not reported "
                                            "one by one: bad_signature 5, malformed 980")
    with path.open("a") as f:  # the limit is per poll
        f.write("more junk\n")
    assert src.poll() == [] and reasons(events)[21:] == ["malformed"]


def test_state_and_restore_read_on_from_the_offset(tmp_path):
    path = tmp_path / "commands.jsonl"
    first = line("germinate", "mid", "n1", blueprint="norm", seed="s1")
    path.write_text(first + "\n" + line("prune", "mid", "n2")[:30])  # the second is partial
    src = source(path)
    assert [d.action for d in src.poll()] == ["germinate"]
    state = json.loads(json.dumps(src.state()))
    assert state["offset"] == len(first) + 1  # up to the last complete line only
    assert [n for _, n in state["verifier"]["nonces"]] == ["n1"]
    src.close()

    path.write_text(first + "\n" + line("prune", "mid", "n2") + "\n" + first + "\n")
    events: list = []
    resumed = source(path, events)
    resumed.restore(state)
    assert [d.action for d in resumed.poll()] == ["prune"]  # the first line is not read again
    assert reasons(events) == ["replayed_nonce"]  # and its replay is refused
    state = resumed.state()
    assert state["offset"] == path.stat().st_size
    resumed.close()

    path.write_text(first + "\n")  # shorter than the offset: replaced, read from the start
    events.clear()
    replaced = source(path, events)
    replaced.restore(state)
    assert replaced.poll() == [] and reasons(events) == ["replayed_nonce"]
    replaced.close()


@pytest.mark.parametrize("state", [None, {"offset": -1, "verifier": {"horizon": None,
                                                                     "nonces": []}},
                                   {"offset": 0}, {"offset": 0, "verifier": []}])
def test_restore_refuses_a_malformed_state(tmp_path, state):
    path = tmp_path / "commands.jsonl"
    path.write_text("")
    with pytest.raises(ValueError):
        source(path).restore(state)


def test_fifo_source_never_blocks(tmp_path):
    path = tmp_path / "commands.fifo"
    os.mkfifo(path)
    src = source(path)  # no writer yet: opening does not wait
    assert src.poll() == []
    writer = os.open(path, os.O_WRONLY)
    try:
        assert src.poll() == []  # a writer, but nothing written
        os.write(writer, (line("prune", "mid", "n1") + "\n").encode())
        assert [d.action for d in src.poll()] == ["prune"]
    finally:
        os.close(writer)
    assert src.poll() == []  # the writer left: end of file, still no block
    src.close()


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_bad_command_paths_are_refused(tmp_path, make):
    path = tmp_path / "cmds"
    if make == "directory":
        path.mkdir()
    with pytest.raises(CommandSourceError, match="cmds"):
        source(path)


def grow_args(out: Path, commands: Path, epochs: int = 3) -> list[str]:
    return ["grow", "--epochs", str(epochs), "--limit", "96", "--no-compile", "--quiet",
            "--slots", "early", "mid", "--out", str(out), "--controller", "external",
            "--commands", str(commands)]


def test_grow_applies_verified_commands_and_reports_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("ESPER_COMMAND_KEY", KEY.decode())
    commands = tmp_path / "commands.jsonl"
    good = line("germinate", "mid", "n1", blueprint="norm", seed="ext-1")
    commands.write_text("\n".join([
        good,
        good,  # replayed
        line("germinate", "early", "n2", blueprint="norm", seed="x", key=b"wrong"),
        line("germinate", "early", "n3", blueprint="norm", seed="y", issued_at=0.0),
        line("germinate", "mid", "n4", blueprint="norm", seed="ext-2"),  # slot occupied
        line("fossilize", "early", "n5"),  # nothing to fossilize
    ]) + "\n")
    out = tmp_path / "run"
    assert main(grow_args(out, commands)) == 0
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    decisions = [(e["action"], e["slot"], e["reason"], e["outcome"].split(":")[0])
                 for e in events if e["kind"] == "decision"]
    assert decisions == [("germinate", "mid", "external", "germinated"),
                         ("germinate", "mid", "external", "rejected"),
                         ("fossilize", "early", "external", "refused")]
    rejected = [e["payload"]["reason"] for e in events if e.get("type") == "COMMAND_REJECTED"]
    assert rejected == ["replayed_nonce", "bad_signature", "stale"]
    germinated = [e for e in events if e.get("type") == "SEED_GERMINATED"]
    assert [(e["slot_id"], e["seed_id"]) for e in germinated] == [("mid", "ext-1")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds_germinated"] == 1  # the heuristic planted nothing


@pytest.mark.parametrize("extra, env, message", [
    (["--controller", "external"], KEY.decode(), "go together"),
    (["--commands", "CMDS"], KEY.decode(), "go together"),
    (["--controller", "external", "--commands", "CMDS"], None, "ESPER_COMMAND_KEY"),
    (["--controller", "external", "--commands", "MISSING"], KEY.decode(), "mkfifo"),
])
def test_bad_external_controller_arguments_exit_2(tmp_path, monkeypatch, capsys, extra, env,
                                                  message):
    (tmp_path / "CMDS").write_text("")
    monkeypatch.delenv("ESPER_COMMAND_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("ESPER_COMMAND_KEY", env)
    extra = [str(tmp_path / a) if a in ("CMDS", "MISSING") else a for a in extra]
    argv = ["grow", "--epochs", "1", "--limit", "96", "--no-compile", "--quiet",
            "--out", str(tmp_path / "run"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def tiny(out: Path, commands: Path, epochs: int, **changes) -> GrowConfig:
    return GrowConfig(epochs=epochs, out=out, limit=96, compile=False, quiet=True,
                      slots=("early", "mid"), commands=commands, blending_steps=3,
                      embargo_epochs=2, **changes)


def read_events(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]


@pytest.fixture
def external_run(monkeypatch):
    monkeypatch.setenv("ESPER_COMMAND_KEY", KEY.decode())
    monkeypatch.setattr(external, "FRESHNESS_S", 600.0)  # no staleness on a slow machine


def test_commands_are_not_replayed_across_a_resume(tmp_path, external_run):
    commands, out = tmp_path / "commands.jsonl", tmp_path / "run"
    sent = [line("germinate", "mid", "n1", blueprint="norm", seed="s1"),
            line("prune", "mid", "n2", seed="s1")]
    commands.write_text("\n".join(sent) + "\n")
    grow(tiny(out, commands, epochs=6, stop_after=4))
    checkpoint = load_checkpoint(out / "checkpoint")
    saved = checkpoint.trainer_state["commands"]
    assert saved["offset"] == commands.stat().st_size
    assert [n for _, n in saved["verifier"]["nonces"]] == ["n1", "n2"]
    assert checkpoint.model.slot_states()["mid"].stage.name == "RESETTING"  # DORMANT at 5
    before = len(read_events(out))

    with commands.open("a") as f:  # the same two signed lines again, within their window
        f.write("\n".join(sent) + "\n")
    grow(tiny(out, commands, epochs=6), resume=out)
    after = read_events(out)[before:]
    assert [(e["epoch"], e["payload"]["reason"], e["payload"]["nonce"]) for e in after
            if e.get("type") == "COMMAND_REJECTED"] == [(5, "replayed_nonce", "n1"),
                                                        (5, "replayed_nonce", "n2")]
    assert not [e for e in after if e["kind"] == "decision"]
    assert not [e for e in after if e.get("type") in ("SEED_GERMINATED", "SEED_PRUNED")]
    final = load_checkpoint(out / "checkpoint")
    assert final.model.slot_states()["mid"].stage.name == "DORMANT"
    assert json.loads((out / "summary.json").read_text())["seeds_germinated"] == 1
    assert final.trainer_state["commands"]["offset"] == commands.stat().st_size


def test_a_checkpoint_without_command_state_still_resumes(tmp_path, external_run):
    commands, out = tmp_path / "commands.jsonl", tmp_path / "run"
    commands.write_text(line("germinate", "mid", "n1", blueprint="norm", seed="s1") + "\n")
    grow(tiny(out, commands, epochs=3, stop_after=1))
    document = current(out / "checkpoint") / "checkpoint.json"
    older = json.loads(document.read_text())
    del older["trainer"]["commands"]  # as written before the command state was saved
    older["checksum"] = document_checksum(older)
    document.write_text(json.dumps(older))
    before = len(read_events(out))
    grow(tiny(out, commands, epochs=3), resume=out)
    # Nothing remembered: the file is read from its start again, as it used to be.
    decisions = [(e["epoch"], e["outcome"].split(":")[0]) for e in read_events(out)[before:]
                 if e["kind"] == "decision"]
    assert decisions == [(2, "rejected")]  # the slot is occupied by s1 already
    assert load_checkpoint(out / "checkpoint").trainer_state["commands"]["offset"] > 0

    document = current(out / "checkpoint") / "checkpoint.json"
    edited = json.loads(document.read_text())
    edited["trainer"]["commands"]["offset"] = -1
    edited["checksum"] = document_checksum(edited)  # a forgery: the field check must catch it
    document.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="'commands': the command offset must be"):
        grow(tiny(out, commands, epochs=3), resume=out)


def test_a_command_naming_another_seed_is_rejected(tmp_path, external_run):
    commands, out = tmp_path / "commands.jsonl", tmp_path / "run"
    commands.write_text("\n".join([
        line("germinate", "mid", "n1", blueprint="norm", seed="s1"),
        line("prune", "mid", "n2", seed="ghost"),
        line("fossilize", "mid", "n3", seed="ghost"),
        line("prune", "early", "n4", seed="s1"),  # early holds no seed
        line("prune", "mid", "n5", seed="s1"),
    ]) + "\n")
    grow(tiny(out, commands, epochs=1))
    events = read_events(out)
    rejected = [(e["slot_id"], e["seed_id"], e["payload"]["reason"], e["payload"]["detail"])
                for e in events if e.get("type") == "COMMAND_REJECTED"]
    assert rejected == [
        ("mid", "ghost", "seed_mismatch",
         "the prune command names seed 'ghost', but slot 'mid' holds seed 's1' (GERMINATED)"),
        ("mid", "ghost", "seed_mismatch",
         "the fossilize command names seed 'ghost', but slot 'mid' holds seed 's1' "
         "(GERMINATED)"),
        ("early", "s1", "seed_mismatch",
         "the prune command names seed 's1', but slot 'early' holds no seed")]
    assert [(e["action"], e["seed_id"], e["outcome"]) for e in events
            if e["kind"] == "decision"] == [("germinate", "s1", "germinated"),
                                            ("prune", "s1", "pruned")]
    pruned = [e for e in events if e.get("type") == "SEED_PRUNED"]
    assert [(e["slot_id"], e["seed_id"]) for e in pruned] == [("mid", "s1")]
