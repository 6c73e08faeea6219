"""The run directory: records, events.jsonl, metrics.csv, summary.json and growth.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.image import imread

import esper
from esper.leyline import EventType, SeedStage, TelemetryEvent
from esper.tamiyo.decisions import Decision
from esper.tolaria.records import EpochRecord, RunSummary, SlotSnapshot
from esper.tolaria.report import (
    EVENTS_FILE,
    GROWTH_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunWriter,
    plot_growth,
    slot_columns,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(epoch: int, *slots: SlotSnapshot, baseline: float | None = None) -> EpochRecord:
    return EpochRecord(epoch, 2.0 / epoch, 50.0 + epoch, tuple(slots), 0.25, baseline)


def _summary(out_dir: Path, baseline: float | None = 52.0) -> RunSummary:
    return RunSummary("digits", 3, 53.0, baseline, 1, 1, 0, 1000, 120, 1.5, 2, 1, str(out_dir))


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    height, width, _ = imread(path).shape
    assert height > 200 and width > 500


def _run(tmp_path: Path) -> tuple[Path, list[EpochRecord]]:
    """A three-epoch run: ``mid`` trains then blends, ``late`` never germinates."""
    seeded = dict(seed_id="mid-1", blueprint_id="norm")
    records = [
        _record(1, SlotSnapshot("mid", "DORMANT", 0.0), SlotSnapshot("late", "DORMANT", 0.0),
                baseline=50.5),
        _record(2, SlotSnapshot("mid", "TRAINING", 0.0, gradient_ratio=0.3, **seeded),
                SlotSnapshot("late", "DORMANT", 0.0)),
        _record(3, SlotSnapshot("mid", "BLENDING", 0.2, counterfactual=1.5, gradient_ratio=0.25,
                                last_gate="G2 passed", **seeded),
                SlotSnapshot("late", "DORMANT", 0.0), baseline=52.0),
    ]
    out = tmp_path / "run"
    germinated = TelemetryEvent(EventType.SEED_GERMINATED, "mid", "mid-1", 2,
                                {"blueprint_id": "norm", "seed_id": "mid-1", "params": 120})
    with RunWriter(out, slots=["mid", "late"]) as writer:
        writer.event({**Decision("germinate", "mid", "plateau", "norm", "mid-1").to_dict(),
                      "kind": "decision", "epoch": 2})
        writer.event({**germinated.to_dict(), "kind": "lifecycle", "stage": SeedStage.TRAINING})
        for record in records:
            writer.epoch(record)
        writer.finish(_summary(out), records, baseline=[50.5, 51.0, 52.0])
    return out, records


def test_run_writer_writes_the_four_files(tmp_path: Path) -> None:
    out, _ = _run(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [EVENTS_FILE, METRICS_FILE, SUMMARY_FILE, GROWTH_FILE])

    events = [json.loads(line) for line in (out / EVENTS_FILE).read_text().splitlines()]
    assert [e["kind"] for e in events] == ["decision", "lifecycle"]
    assert events[0] == {"action": "germinate", "slot": "mid", "reason": "plateau",
                         "blueprint_id": "norm", "seed_id": "mid-1", "blend_algorithm_id": None,
                         "kind": "decision",
                         "epoch": 2}
    assert events[1]["type"] == "SEED_GERMINATED" and events[1]["payload"]["params"] == 120
    assert events[1]["stage"] == "TRAINING"  # enums are written by name

    with (out / METRICS_FILE).open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == slot_columns(["mid", "late"])
        rows = list(reader)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["baseline_accuracy"] for r in rows] == ["50.5", "", "52.0"]
    assert [r["mid_stage"] for r in rows] == ["DORMANT", "TRAINING", "BLENDING"]
    assert float(rows[2]["mid_alpha"]) == 0.2 and float(rows[2]["val_accuracy"]) == 53.0
    assert rows[2]["mid_seed"] == "mid-1" and rows[2]["mid_blueprint"] == "norm"
    assert rows[2]["mid_counterfactual"] == "1.5" and rows[1]["mid_counterfactual"] == ""
    assert rows[1]["mid_gradient_ratio"] == "0.3" and rows[0]["mid_seed"] == ""
    assert {r["late_stage"] for r in rows} == {"DORMANT"}

    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary == {**_summary(out).to_dict(), "esper_version": esper.__version__}
    assert RunSummary.from_dict(summary) == _summary(out)
    _assert_png(out / GROWTH_FILE)


def test_logs_are_flushed_line_by_line(tmp_path: Path) -> None:
    with RunWriter(tmp_path, slots=["mid"]) as writer:
        assert (tmp_path / METRICS_FILE).read_text().splitlines() == [
            ",".join(slot_columns(["mid"]))]
        writer.event({"kind": "decision", "epoch": 1})
        writer.epoch(_record(1, SlotSnapshot("mid", "DORMANT", 0.0)))
        assert len((tmp_path / EVENTS_FILE).read_text().splitlines()) == 1
        assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 2
    assert writer._events.closed and writer._metrics.closed


def test_slot_missing_from_a_record_leaves_empty_cells(tmp_path: Path) -> None:
    with RunWriter(tmp_path, slots=["a", "b"]) as writer:
        writer.epoch(_record(1, SlotSnapshot("b", "TRAINING", 0.0, "b-1", "conv")))
    with (tmp_path / METRICS_FILE).open(newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["a_stage"] == "" and row["b_stage"] == "TRAINING"


def test_unknown_slot_or_duplicate_slots_are_rejected(tmp_path: Path) -> None:
    with RunWriter(tmp_path, slots=["a"]) as writer, pytest.raises(ValueError, match="zzz"):
        writer.epoch(_record(1, SlotSnapshot("zzz", "DORMANT", 0.0)))
    with pytest.raises(ValueError, match="unique"):
        RunWriter(tmp_path / "dup", slots=["a", "a"])


_LIFE = ["DORMANT", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED"]


@pytest.mark.parametrize(("records", "slots", "baseline"), [
    pytest.param([_record(1, SlotSnapshot("mid", "TRAINING", 0.0, "m", "norm"))], ["mid"], None,
                 id="one-epoch"),
    pytest.param([_record(e) for e in range(1, 6)], [], None, id="no-slots"),
    pytest.param([_record(e, SlotSnapshot("mid", "DORMANT", 0.0)) for e in range(1, 6)],
                 ["mid", "absent"], None, id="never-seeded"),
    pytest.param([_record(e, SlotSnapshot("mid", s, min(1.0, e / 4), "m", "norm"))
                  for e, s in enumerate(_LIFE, 1)], ["mid"], [50.0, 51.0, 51.5, 52.0, 52.2],
                 id="baseline-list"),
    pytest.param([_record(e, baseline=50.0 + e / 2) for e in range(1, 4)], [], None,
                 id="baseline-in-records"),
    pytest.param([_record(e, SlotSnapshot("s", st, 0.0)) for e, st in enumerate(
        ["TRAINING", "PRUNED", "EMBARGOED", "RESETTING", "PROBATIONARY", "weird"], 1)], ["s"],
        None, id="failure-path-and-unknown-stage"),
    pytest.param([], ["mid"], None, id="no-epochs"),
])
def test_plot_growth_edge_cases(tmp_path: Path, records: list[EpochRecord], slots: list[str],
                                baseline: list[float] | None) -> None:
    path = plot_growth(records, slots, tmp_path / "sub" / "growth.png", baseline=baseline)
    _assert_png(path)


def test_records_are_json_ready() -> None:
    snapshot = SlotSnapshot("mid", "BLENDING", 0.5, "mid-1", "norm", 1.0, 0.2, "G2 passed")
    record = EpochRecord(4, 0.5, 80.0, (snapshot,), 1.25, 79.0)
    assert json.loads(json.dumps(record.to_dict()))["slots"][0] == snapshot.to_dict()
    assert EpochRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.slot("mid") is snapshot and record.slot("nope") is None
    summary = RunSummary("digits", 4, 80.0, None, 1, 0, 0, 1000, 50, 2.0, 1, 1, "runs/x")
    assert json.loads(json.dumps(summary.to_dict()))["parameters_added"] == 50
    assert summary.parameters_added_percent == pytest.approx(5.0)
    assert RunSummary.from_dict({**summary.to_dict(), "esper_version": "x"}) == summary
    with pytest.raises(AttributeError):
        snapshot.alpha = 1.0  # type: ignore[misc]
