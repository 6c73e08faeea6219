"""Run directories: an existing run is never replaced unasked, and a live run locks its own."""

from __future__ import annotations

import csv
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper.checkpoint import load_checkpoint
from esper.checkpoint.layout import current
from esper.cli import main
from esper.errors import (
    CheckpointError,
    ResumeConflictError,
    RunDirectoryExistsError,
    RunDirectoryLockedError,
)
from esper.tolaria.config import GrowConfig
from esper.tolaria.run import grow
from esper.tolaria.rundir import LOCK_FILE, claim_run_dir

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--epochs", "1", "--limit", "16", "--no-compile", "--quiet"]
# A process that holds the lock on argv[1] until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from esper.tolaria.rundir import claim_run_dir
with claim_run_dir(Path(sys.argv[1]), overwrite=True):
    print("holding", flush=True)
    sys.stdin.read()
"""


def tiny(out: Path, epochs: int = 1, **changes) -> GrowConfig:
    options = {"limit": 16, "compile": False, "quiet": True, "max_seeds": 1, **changes}
    return GrowConfig(epochs=epochs, out=out, **options)


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` (relative) and its bytes (``None`` for a directory)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
            for p in sorted(directory.rglob("*"))}


def python_env() -> dict[str, str]:
    """The environment of a child Python that imports this worktree's ``esper``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def lock_is_free(directory: Path) -> bool:
    fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


# --------------------------------------------------------------------------- existing runs


def test_an_existing_run_is_refused_and_left_byte_for_byte(tmp_path, capsys):
    out = tmp_path / "run"
    grow(tiny(out, epochs=2))
    before = tree(out)
    assert {"checkpoint", "metrics.csv", "summary.json", "events.jsonl"} <= set(before)
    code, err = exit_code(["grow", *QUICK, "--out", str(out)], capsys)
    assert code == 2
    assert f"--out {out}: the directory already holds a run (checkpoint, events.jsonl" in err
    assert "continue it with --resume, replace it with --overwrite" in err
    assert tree(out) == before
    assert load_checkpoint(out / "checkpoint").trainer_state["epoch"] == 2


def test_any_file_makes_a_directory_a_run_and_a_file_is_no_directory(tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = exit_code(["grow", *QUICK, "--out", str(out)], capsys)
    assert code == 2 and "already holds a run (notes.txt)" in err
    assert tree(out) == {"notes.txt": b"mine"}
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(RunDirectoryExistsError, match="exists and is not a directory"):
        grow(tiny(plain))
    assert plain.read_text() == "x"


def test_an_empty_directory_is_a_fine_run_directory(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    grow(tiny(out))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]


def test_overwrite_replaces_the_run_and_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "run"
    grow(tiny(out, epochs=3))
    (out / "notes.txt").write_text("mine")
    assert main(["grow", *QUICK, "--out", str(out), "--overwrite"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]
    assert load_checkpoint(out / "checkpoint").trainer_state["epoch"] == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_continues_in_place_but_never_into_another_run(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    grow(tiny(run, epochs=2, stop_after=1))
    grow(tiny(other, epochs=1))
    before = tree(other)
    code, err = exit_code(["grow", "--epochs", "2", "--limit", "16", "--no-compile", "--quiet",
                           "--resume", str(run), "--out", str(other)], capsys)
    assert code == 2
    assert (f"--out {other} conflicts with the run's directory {run}: a resumed run continues "
            f"in its own directory; leave --out out, or pass --out {run}") in err
    assert tree(other) == before
    code, err = exit_code(["grow", "--resume", str(run), "--overwrite", "--out", str(run)],
                          capsys)
    assert code == 2 and "--overwrite: not allowed with argument --resume" in err
    grow(tiny(run, epochs=2), resume=run / "checkpoint")  # in place: allowed
    assert load_checkpoint(run / "checkpoint").trainer_state["epoch"] == 2


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = exit_code(["grow", *QUICK, "--out", out], capsys)
    assert code == 2
    assert "argument --out: must name a directory, got an empty path" in err
    with pytest.raises(ValueError, match="out must name a run directory"):
        GrowConfig(out=out)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the lock


def test_the_lock_holds_the_pid_while_the_run_lives_and_is_released_after(tmp_path):
    out = tmp_path / "run"
    seen: list[str] = []
    with claim_run_dir(out) as claimed:
        assert claimed == out
        seen.append((out / LOCK_FILE).read_text())
        assert not lock_is_free(out)
        with pytest.raises(RunDirectoryLockedError, match=f"pid {os.getpid()}") as info:
            grow(tiny(out))
        assert info.value.pid == os.getpid()
    assert seen == [f"{os.getpid()}\n"]
    assert not out.exists()  # created for a run that wrote nothing: removed again
    grow(tiny(out))
    assert lock_is_free(out) and (out / LOCK_FILE).read_text() == ""


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    run = tmp_path / "run"
    grow(tiny(run, epochs=2, stop_after=1))
    weights = current(run / "checkpoint") / "weights.safetensors"  # type: ignore[operator]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):  # after the claim: bad weights
        grow(tiny(run, epochs=2), resume=run)
    assert lock_is_free(run) and (run / LOCK_FILE).read_text() == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError):  # before the claim: nothing to resume from
        grow(tiny(empty), resume=empty)
    assert list(empty.iterdir()) == []
    new = tmp_path / "new"
    with pytest.raises(ResumeConflictError):  # a resumed run writes only into its directory
        grow(tiny(new), resume=empty)
    assert not new.exists()


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                              env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for extra in ([], ["--overwrite"]):
            started = time.monotonic()
            code, err = exit_code(["grow", *QUICK, "--out", str(out), *extra], capsys)
            assert code == 2
            assert (f"--out {out}: the run directory is locked by another esper run "
                    f"(pid {holder.pid}); wait for it to end" in err)
            assert time.monotonic() - started < 5.0
        assert tree(out) == {LOCK_FILE: f"{holder.pid}\n".encode()}
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert not out.exists()  # the holder wrote nothing, and let go


def test_two_cli_runs_on_one_directory_one_is_refused(tmp_path):
    """The report's case: two ``esper grow`` on one ``--out`` both exited 0, interleaving
    ``metrics.csv``. Now the second exits 2 at once naming the first, whose log stays whole;
    the first, interrupted, lets the lock go."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "esper", "grow", "--limit", "16", "--no-compile", "--quiet",
            "--out", str(out)]
    first = subprocess.Popen([*argv, "--epochs", "100000"], cwd=ROOT, env=python_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.csv").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first never ran"
            time.sleep(0.02)
        second = subprocess.run([*argv, "--epochs", "1", "--overwrite"], cwd=ROOT,
                                env=python_env(), capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=120)
    assert second.returncode == 2
    assert f"locked by another esper run (pid {first.pid})" in second.stderr, second.stderr
    assert "KeyboardInterrupt" in first_err
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert lock_is_free(out) and (out / LOCK_FILE).read_text() == ""
