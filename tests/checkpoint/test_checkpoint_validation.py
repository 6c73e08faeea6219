"""Issue 11, defect 3: an edited or hostile checkpoint.json is refused, field by field.

At 98a0a54 seven edits crashed with tracebacks and nine were silently accepted
(``epoch`` 10 -> 8 re-trained two epochs, ``seed_lr`` NaN destroyed the model,
a CSV formula in ``seed_id`` reached ``metrics.csv``...).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_support import tamper

from esper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from esper.checkpoint import format as checkpoint_format
from esper.checkpoint.layout import current
from esper.data import load_task
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.progress import check_progress
from esper.tolaria.records import EpochRecord, SlotSnapshot
from esper.tolaria.report import METRICS_FILE, RunWriter
from esper.tolaria.trainer import Trainer


def tiny_trainer(tmp_path: Path) -> Trainer:
    config = GrowConfig(epochs=3, out=tmp_path, limit=96, compile=False, quiet=True,
                        controller=ControllerConfig(warmup_epochs=100), slots=("mid",),
                        batch_size=32)
    return Trainer(config, load_task("digits", limit=96))


@pytest.fixture(scope="module")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    trainer = tiny_trainer(root)
    trainer.run_epoch()
    trainer.run_epoch()
    return save_checkpoint(root / "checkpoint", model=trainer.model, optimizer=trainer.optimizer,
                           trainer_state=trainer.trainer_state())


@pytest.fixture
def trained(_trained: Path, tmp_path: Path) -> Path:
    """A fresh copy of a two-epoch trainer's checkpoint version."""
    version = current(_trained)
    copy = tmp_path / version.name
    copy.mkdir()
    for item in version.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


def resume(path: Path, tmp_path: Path) -> Trainer:
    checkpoint = load_checkpoint(path)
    trainer = tiny_trainer(tmp_path / "resumed")
    trainer.restore(checkpoint.model, checkpoint.optimizer, checkpoint.trainer_state)
    return trainer


def edit(path: Path, change, *, reseal: bool) -> None:
    """Change the document; ``reseal`` re-stamps its checksum (a deliberate forgery)."""
    if reseal:
        tamper(path, document=change)
        return
    document_path = path / "checkpoint.json"
    document = json.loads(document_path.read_text())
    change(document)
    document_path.write_text(json.dumps(document, indent=1))


def test_an_intact_checkpoint_resumes(trained, tmp_path):
    trainer = resume(trained, tmp_path)
    assert trainer.epoch == 2 and [r.epoch for r in trainer.records] == [1, 2]


@pytest.mark.parametrize("change", [
    lambda d: d["trainer"].update(epoch=1),
    lambda d: d["trainer"]["records"][0].update(val_accuracy=99.0),
    lambda d: d["optimizer"]["config"].update(seed_lr=float("nan")),
    lambda d: d["optimizer"]["config"].update(lr=0),
    lambda d: d["slots"]["mid"].update(seed_id="=HYPERLINK(\"http://x\")"),
])
def test_any_edit_breaks_the_checksum(trained, change):
    edit(trained, change, reseal=False)
    with pytest.raises(CheckpointError, match="checksum does not match its content"):
        load_checkpoint(trained)


def test_reformatting_the_document_keeps_the_checksum(trained):
    edit(trained, lambda d: None, reseal=False)  # indent 1 -> the writer's own layout again
    path = trained / "checkpoint.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, sort_keys=True))
    assert load_checkpoint(trained).trainer_state["epoch"] == 2


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["optimizer"]["config"].update(seed_lr="fast"), "seed_lr must be a finite"),
    (lambda d: d["optimizer"]["config"].update(seed_lr=float("nan")), "seed_lr must be a finite"),
    (lambda d: d["optimizer"]["config"].update(seed_lr=-1e30), "seed_lr must be a finite"),
    (lambda d: d["optimizer"]["config"].update(lr=0), r"lr must lie in \(0, 10\]"),
])
def test_forged_optimizer_settings_are_refused(trained, change, message):
    edit(trained, change, reseal=True)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(trained)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["trainer"].update(epoch=1), "epoch is 1 but the records are 2"),
    (lambda d: d["trainer"].update(epoch=-3), r"epoch must be an int in \[0, "),
    (lambda d: d["trainer"].update(epoch=1e400), r"epoch must be an int in \[0, "),
    (lambda d: d["trainer"].update(events_written=-5), r"events_written must be an int in \[0"),
    (lambda d: d["trainer"].pop("global_step"), r"missing keys \['global_step'\]"),
    (lambda d: d["trainer"].update(records={"a": 1}), "the records are dict"),
    (lambda d: d["trainer"].update(controller=[1, 2]), "controller must be an object"),
    (lambda d: d["trainer"]["records"][1].update(epoch=5), r"records\[1\].epoch is 5, expected 2"),
    (lambda d: d["trainer"]["records"][0].update(val_accuracy=float("nan")),
     r"records\[0\].val_accuracy must be finite"),
    (lambda d: d["trainer"]["records"][0].update(val_accuracy=300.0),
     r"records\[0\].val_accuracy must lie in \[0.0, 100.0\]"),
    (lambda d: d["trainer"]["tally"].update(SEED_PRUNED=-1), r"tally\['SEED_PRUNED'\]"),
])
def test_forged_progress_is_refused_before_anything_changes(trained, tmp_path, change, message):
    edit(trained, change, reseal=True)
    checkpoint = load_checkpoint(trained)
    trainer = tiny_trainer(tmp_path / "victim")
    before = (trainer.model, trainer.epoch, list(trainer.records))
    with pytest.raises(CheckpointError, match=message):
        trainer.restore(checkpoint.model, checkpoint.optimizer, checkpoint.trainer_state)
    assert (trainer.model, trainer.epoch, trainer.records) == before


def test_nan_weights_with_a_matching_hash_are_refused(trained):
    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model/host.head.weight"][0, 0] = float("nan")

    tamper(trained, tensors=poison)
    with pytest.raises(CheckpointError, match=r"'model/host.head.weight' holds NaN or infinite"):
        load_checkpoint(trained)


def test_deep_nesting_is_refused_before_parsing(trained):
    (trained / "checkpoint.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="JSON nested 200000 deep, over the 32"):
        load_checkpoint(trained)


def test_an_oversized_document_is_refused_before_reading(trained, monkeypatch):
    size = (trained / "checkpoint.json").stat().st_size
    monkeypatch.setattr(checkpoint_format, "MAX_DOCUMENT_BYTES", size - 1)
    monkeypatch.setattr("esper.checkpoint.document.MAX_DOCUMENT_BYTES", size - 1)
    with pytest.raises(CheckpointError, match=f"{size} bytes, over the {size - 1}"):
        load_checkpoint(trained)


def test_check_progress_accepts_what_the_trainer_writes(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.run_epoch()
    state = json.loads(json.dumps(trainer.trainer_state()))
    checked = check_progress(state)
    assert checked["records"] == trainer.records
    assert math.isfinite(checked["records"][0].val_accuracy)


@pytest.mark.parametrize(("seed_id", "cell"), [
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ("+1+2", "'+1+2"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"),
    ("seed\x07\n\r1", "seed\\x07\\x0a\\x0d1"), ("seed-1", "seed-1"),
])
def test_text_in_metrics_csv_cannot_be_a_formula_or_break_a_line(tmp_path, seed_id, cell):
    snapshot = SlotSnapshot("mid", "TRAINING", 0.0, seed_id=seed_id, blueprint_id="norm")
    with RunWriter(tmp_path, slots=("mid",)) as writer:
        writer.epoch(EpochRecord(1, 0.5, 50.0, (snapshot,), 1.0))
    rows: list[dict[str, Any]] = list(csv.DictReader((tmp_path / METRICS_FILE).open()))
    assert len(rows) == 1 and rows[0]["mid_seed"] == cell
