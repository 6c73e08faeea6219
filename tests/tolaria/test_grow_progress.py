"""What a person watching ``esper grow`` sees: steps, compiles, learning rate, validation loss."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from esper.data import load_task
from esper.optim import lr_factor
from esper.tolaria import display
from esper.tolaria.display import Progress
from esper.tolaria.run import grow
from esper.tolaria.trainer import Trainer
from tests.tolaria.test_tolaria_grow import tiny


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_metrics_hold_the_validation_loss_and_the_scheduled_learning_rate(tmp_path):
    out = tmp_path / "run"
    grow(tiny(out, 3, schedule="cosine", lr=0.08))
    table = rows(out)
    assert list(table[0])[:7] == ["epoch", "train_loss", "val_loss", "val_accuracy",
                                  "baseline_accuracy", "lr", "seconds"]
    per_epoch = Trainer(tiny(out, 3), load_task("digits", limit=96)).steps_per_epoch
    for row in table:
        epoch = int(row["epoch"])
        want = 0.08 * lr_factor("cosine", epoch * per_epoch - 1, 3 * per_epoch)
        assert float(row["lr"]) == pytest.approx(want)
        assert 0 < float(row["val_loss"]) < 10
    assert float(table[-1]["lr"]) < float(table[0]["lr"])


def test_a_run_logged_before_val_loss_and_lr_resumes_in_its_own_columns(tmp_path):
    out = tmp_path / "run"
    grow(tiny(out, 2, stop_after=1))
    old = rows(out)
    legacy = [c for c in old[0] if c not in ("val_loss", "lr")]
    with (out / "metrics.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, legacy, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(old)
    grow(tiny(out, 2), resume=out)
    table = rows(out)
    assert list(table[0]) == legacy and [r["epoch"] for r in table] == ["1", "2"]


def test_the_trainer_reports_each_step_and_each_compile(tmp_path):
    config = tiny(tmp_path / "run", 2, compile=True, compile_backend="eager", max_seeds=0)
    notes: list[str] = []
    steps: list[tuple[int, int]] = []
    trainer = Trainer(config, load_task("digits", limit=96), notify=notes.append,
                      on_step=lambda done, total: steps.append((done, total)))
    trainer.run_epoch()
    total = trainer.steps_per_epoch
    assert steps == [(i, total) for i in range(1, total + 1)]
    assert notes[0].startswith("compiling the training step... (first time")
    assert notes[1].startswith("compiled the training step in ")
    assert "(1 graph(s) so far)" in notes[1] and len(notes) == 2
    assert trainer.counter.seconds > 0 and f"in {trainer.counter.seconds:.1f}s" in notes[1]
    trainer.run_epoch()  # the same topology (no seeds): no notice
    assert len(notes) == 2 and len(steps) == 2 * total


def test_plain_progress_prints_a_step_line_only_for_slow_epochs(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(display.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    progress = Progress(Console(file=out), quiet=True)
    progress.start(3)
    for done in range(1, 5):
        clock[0] += 1.0
        progress.step(done, 20)
    assert out.getvalue() == ""  # four seconds: nothing yet
    clock[0] += display.PROGRESS_LINE_SECONDS
    progress.step(5, 20)
    assert out.getvalue() == "  epoch 1: step 5/20 (25%)\n"
    progress.step(6, 20)
    assert out.getvalue().count("\n") == 1  # one line per period
