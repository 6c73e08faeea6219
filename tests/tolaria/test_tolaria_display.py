"""The console: plain lines for logs, a live slot table on a terminal, the summary table."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from esper.tolaria.display import Progress, format_epoch_line, print_summary, render_summary
from esper.tolaria.records import EpochRecord, RunSummary, SlotSnapshot


def _records(n: int = 3) -> list[EpochRecord]:
    out = []
    for e in range(1, n + 1):
        mid = (SlotSnapshot("mid", "BLENDING", 0.4, "mid-1", "norm", 1.25, 0.3, "G2 passed")
               if e > 1 else SlotSnapshot("mid", "DORMANT", 0.0))
        late = SlotSnapshot("late", "TRAINING", 0.0, "late-1", "attention", None, 0.01,
                            "G2 -> BLENDING failed: improvement_low")
        out.append(EpochRecord(e, 1.0 / e, 60.0 + e, (mid, late), 0.5, 59.0 + e))
    return out


def _terminal() -> tuple[Console, StringIO]:
    buffer = StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def test_quiet_mode_prints_one_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(quiet=True) as progress:
        progress.start(3)
        for record in _records(3):
            progress.update(record)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "acc 63.00%" in lines[2] and "base 62.00%" in lines[2]
    assert "mid=BLENDING(norm) a=0.40" in lines[2] and "mid=" not in lines[0]  # dormant: omitted
    assert "\x1b[" not in capsys.readouterr().out


def test_quiet_mode_wins_on_a_terminal_and_notes_are_indented_lines() -> None:
    console, buffer = _terminal()
    progress = Progress(console, quiet=True)
    progress.start(2)
    progress.update(_records(1)[0])
    progress.note("epoch 1: germinate mid (norm)")
    progress.stop()
    assert buffer.getvalue().splitlines()[1:] == ["  epoch 1: germinate mid (norm)"]


def test_off_a_terminal_lines_are_plain() -> None:
    buffer = StringIO()
    progress = Progress(Console(file=buffer))  # a StringIO is not a TTY
    assert progress.plain
    with progress:
        for record in _records(2):
            progress.update(record)  # start() is optional
    assert [line[:7] for line in buffer.getvalue().splitlines()] == ["epoch 1", "epoch 2"]


def test_live_mode_shows_the_slot_table() -> None:
    console, buffer = _terminal()
    with Progress(console) as progress:
        assert not progress.plain
        progress.start(5)
        for record in _records(3):
            progress.update(record)
        progress.note("epoch 3: germinate mid (norm)")
    assert progress._live is None
    text = buffer.getvalue()
    for fragment in ("mid", "late", "BLENDING", "TRAINING", "mid-1 (norm)", "late-1 (attention)",
                     "G2 passed", "improvement_low", "+1.25", "0.40", "epoch 3/5", "63.00%",
                     "epoch 3: germinate mid (norm)"):
        assert fragment in text, fragment


def test_live_mode_without_slots_or_total() -> None:
    console, buffer = _terminal()
    with Progress(console) as progress:
        progress.start()
        progress.update(EpochRecord(1, 0.5, 70.0, (), 0.1))
        progress.stop()  # idempotent with __exit__
    assert "epoch 1" in buffer.getvalue() and "70.00%" in buffer.getvalue()


def test_format_epoch_line_without_baseline_or_total() -> None:
    line = format_epoch_line(EpochRecord(4, 0.25, 80.5, (), 1.0))
    assert line == "epoch 4  loss 0.2500  acc 80.50%  1.0s"


def _render(summary: RunSummary) -> str:
    console, buffer = _terminal()
    print_summary(summary, console)
    return buffer.getvalue()


def test_summary_table_contains_the_numbers() -> None:
    summary = RunSummary("cifar10", 25, 88.12, 83.6, 3, 1, 2, 1_234_567, 45_678, 3723.4, 4, 3,
                         "runs/cifar10-1", compile_seconds=91.25,
                         training={"device": "cuda:0", "precision": "bf16", "optimizer": "adamw",
                                   "schedule": "cosine"})
    text = _render(summary)
    for fragment in ("cifar10", "25", "88.12%", "83.60%", "+4.52 pts", "germinated", "fossilized",
                     "pruned", "1,234,567", "45,678", "+3.70% of host", "1h 02m 03.4s",
                     "4 step + 3 probe in 1m 31.2s", "runs/cifar10-1",
                     "cuda:0, bf16, adamw, cosine"):
        assert fragment in text, fragment
    assert render_summary(summary).row_count == 12


def test_summary_without_baseline_or_host() -> None:
    summary = RunSummary("digits", 2, 91.0, None, 0, 0, 0, 0, 0, 12.25, 1, 0, "out")
    text = _render(summary)
    assert "baseline" not in text and "91.00%" in text and "12.2s" in text
    assert "1 step + 0 probe in 0.0s" in text
    assert render_summary(summary).row_count == 10
