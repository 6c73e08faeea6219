"""``esper grow --controller external``: signed commands from a file or FIFO."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from esper.cli import main
from esper.kasmina.commands import CommandVerifier, LifecycleCommand, sign
from esper.tolaria.external import CommandSource, CommandSourceError

KEY = b"test-key-0123456789"


def line(action: str, slot: str, nonce: str, *, blueprint: str | None = None,
         seed: str | None = None, issued_at: float | None = None, key: bytes = KEY) -> str:
    command = LifecycleCommand(action, slot, blueprint, seed,
                               time.time() if issued_at is None else issued_at, nonce)
    return sign(command, key).to_json()


def source(path: Path, events: list | None = None) -> CommandSource:
    verifier = CommandVerifier(KEY, known_slots=frozenset({"early", "mid"}),
                               on_event=None if events is None else events.append)
    return CommandSource(path, verifier)


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
