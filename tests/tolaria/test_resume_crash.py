"""Issue 11, defects 1 and 2 end to end: kill ``esper grow`` anywhere, resume, lose nothing.

A run is SIGKILLed inside a checkpoint save (before chosen file-system calls)
or at a random moment; ``--resume`` then either continues it to the same
weights, momenta, metrics and events as a run never interrupted, or (only
when its first save never completed) says so. Resuming never rewrites the
logs: a log shorter than its checkpoint or garbled within it is refused,
naming the file and the line, with every file left as it was.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esper.checkpoint import CheckpointError, load_checkpoint
from esper.checkpoint.layout import current
from esper.errors import RunLogError
from esper.tolaria.run import grow
from tests.tolaria.kill_grow import config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SCRIPT = [sys.executable, str(ROOT / "tests/tolaria/kill_grow.py")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    grow(config(out))
    return out


def metrics(out: Path) -> list[list[str]]:
    """``metrics.csv`` without the wall-time column."""
    rows = list(csv.reader((out / "metrics.csv").open(newline="")))
    drop = rows[0].index("seconds")
    return [row[:drop] + row[drop + 1:] for row in rows]


def assert_same_run(out: Path, reference: Path, epochs: int = 4) -> None:
    got, want = load_checkpoint(out / "checkpoint"), load_checkpoint(reference / "checkpoint")
    assert got.trainer_state["epoch"] == want.trainer_state["epoch"] == epochs
    for name, value in want.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got.model.state_dict()[name], value), name
    for name, value in want.optimizer.buffers["momentum"].items():
        assert torch.equal(got.optimizer.buffers["momentum"][name], value), name
    assert metrics(out) == metrics(reference)
    assert (out / "events.jsonl").read_bytes() == (reference / "events.jsonl").read_bytes()


def resume(out: Path) -> bool:
    """Resume ``out``; ``False`` when its first checkpoint never completed (said clearly)."""
    try:
        grow(config(out), resume=out)
    except CheckpointError as error:
        assert "first save" in str(error) and "nothing to resume" in str(error), error
        assert not (out / "checkpoint" / "LATEST").exists()
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, 9])  # in the weights; just before the pointer switch
def test_a_run_killed_inside_a_save_resumes_to_the_same_run(tmp_path, reference, step):
    out = tmp_path / "killed"
    done = subprocess.run([*SCRIPT, str(out), "3", str(step)], env=ENV, capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert current(out / "checkpoint").name in ("ckpt-000002", "ckpt-000003")
    assert resume(out)
    assert_same_run(out, reference)


@pytest.mark.slow
def test_a_run_killed_in_its_first_save_says_there_is_nothing_to_resume(tmp_path):
    out = tmp_path / "killed"
    done = subprocess.run([*SCRIPT, str(out), "1", "2"], env=ENV, capture_output=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert not resume(out)


@pytest.mark.slow
def test_a_run_killed_at_random_moments_resumes_to_the_same_run(tmp_path, reference):
    """Killed at a random moment once its first checkpoint exists (before it, the test
    above: nothing to resume, said so)."""
    chance = random.Random(11)
    for case in range(2):
        out = tmp_path / f"killed-{case}"
        run = subprocess.Popen([*SCRIPT, str(out)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "LATEST").exists() and run.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(chance.uniform(0.0, 0.4))  # an epoch here takes about 0.1 s
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert resume(out)
        assert_same_run(out, reference)


def checkpointed(tmp_path: Path) -> Path:
    """A run stopped after three of its four epochs (checkpoint at epoch 3, events in it)."""
    out = tmp_path / "run"
    grow(dataclasses.replace(config(out), stop_after=3))
    assert (out / "events.jsonl").read_bytes().count(b"\n") > 2
    return out


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("damage", "message"), [
    (lambda text: text[: text.index(b"\n") + 1], r"events.jsonl: 1 complete lines, but the "
                                                 r"checkpoint counts \d+ events"),
    (lambda text: b"{not json\n" + text[text.index(b"\n") + 1:],
     r"events.jsonl: line 1 is not a JSON record"),
])
def test_a_cut_or_garbled_event_log_is_refused_and_nothing_is_touched(tmp_path, damage, message):
    out = checkpointed(tmp_path)
    events = out / "events.jsonl"
    events.write_bytes(damage(events.read_bytes()))
    before = tree(out)
    with pytest.raises(RunLogError, match=message):
        grow(config(out), resume=out)
    assert tree(out) == before


def test_a_resume_with_other_slots_is_refused_before_the_metrics_change(tmp_path):
    out = checkpointed(tmp_path)
    before = tree(out)
    with pytest.raises((RunLogError, CheckpointError, ValueError)):
        grow(dataclasses.replace(config(out), slots=("mid",)), resume=out)
    assert tree(out) == before  # at 98a0a54 metrics.csv was cut to its header


def test_what_an_interrupted_epoch_logged_is_cut_and_logged_again(tmp_path, reference):
    out = checkpointed(tmp_path)
    with (out / "events.jsonl").open("ab") as stream:
        stream.write(b'{"kind": "decision", "epoch": 4, "half": tr')  # killed mid-line
    with (out / "metrics.csv").open("a") as stream:
        stream.write("4,0.5,50.0,,1.0\n5,")
    grow(config(out), resume=out)
    assert metrics(out) == metrics(reference)
    assert (out / "events.jsonl").read_bytes() == (reference / "events.jsonl").read_bytes()
