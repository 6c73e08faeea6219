"""``esper grow``: a whole run, from data to report, checkpoint and summary."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import load_task
from ..leyline import EventType
from .config import GrowConfig
from .display import Progress, print_summary
from .records import RunSummary
from .report import EVENTS_FILE, RunWriter
from .trainer import Trainer

CHECKPOINT_DIR = "checkpoint"


def _baseline(config: GrowConfig, data) -> list[float]:  # type: ignore[no-untyped-def]
    """Validation accuracy per epoch of the host alone, same data and seed."""
    alone = Trainer(replace(config, max_seeds=0), data)
    return [alone.run_epoch().val_accuracy for _ in range(config.epochs)]


def _resume(trainer: Trainer, resume: Path) -> list[dict]:
    """Restore ``trainer`` from a run directory; the events logged before its checkpoint."""
    run_dir = resume.parent if resume.name == CHECKPOINT_DIR else resume
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_DIR)
    if checkpoint.optimizer is None:
        raise ValueError(f"{run_dir}: the checkpoint has no optimizer state to resume from")
    trainer.restore(checkpoint.model, checkpoint.optimizer, checkpoint.trainer_state)
    events = run_dir / EVENTS_FILE
    lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
    return [json.loads(line) for line in lines[: trainer.events_written]]


def grow(config: GrowConfig, resume: Path | None = None,
         console: Console | None = None) -> RunSummary:
    """Run ``esper grow`` and return its summary; files go to ``config.out``.

    Arguments:
        config: the run's configuration.
        resume: a run directory (or its checkpoint directory) to continue from.
        console: where the live display goes (stdout by default).
    """
    started = time.perf_counter()
    data = load_task(config.task, data_dir=config.data_dir, seed=config.seed, limit=config.limit)
    out = Path(config.out)
    progress = Progress(console=console, quiet=config.quiet)

    def sink(record: dict) -> None:
        writer.event(record)
        if record["kind"] == "decision":
            progress.note(f"epoch {record['epoch']}: {record['action']} {record['slot']} "
                          f"({record['blueprint_id'] or record['reason']}): {record['outcome']}")

    trainer = Trainer(config, data, sink=sink)
    earlier = _resume(trainer, resume) if resume is not None else []
    baseline = _baseline(config, data) if config.baseline else None
    with RunWriter(out, slots=config.slots if config.max_seeds else ()) as writer, progress:
        for record in earlier:
            writer.event(record)
        for epoch_record in trainer.records:
            writer.epoch(epoch_record)
        progress.start(config.epochs)
        last = min(config.epochs, config.stop_after or config.epochs)
        while trainer.epoch < last:
            epoch_record = trainer.run_epoch()
            if baseline is not None:
                epoch_record = replace(epoch_record,
                                       baseline_accuracy=baseline[epoch_record.epoch - 1])
                trainer.records[-1] = epoch_record
            writer.epoch(epoch_record)
            progress.update(epoch_record)
            save_checkpoint(out / CHECKPOINT_DIR, model=trainer.model,
                            optimizer=trainer.optimizer, trainer_state=trainer.trainer_state())
        summary = _summary(config, trainer, baseline, time.perf_counter() - started)
        writer.finish(summary, trainer.records, baseline)
    print_summary(summary, console)
    return summary


def _summary(config: GrowConfig, trainer: Trainer, baseline: list[float] | None,
             seconds: float) -> RunSummary:
    model, records, tally = trainer.model, trainer.records, trainer.tally
    return RunSummary(
        task=config.task, epochs=trainer.epoch,
        final_accuracy=records[-1].val_accuracy if records else 0.0,
        baseline_accuracy=baseline[-1] if baseline else None,
        seeds_germinated=tally.get(EventType.SEED_GERMINATED.value, 0),
        seeds_fossilized=tally.get(EventType.SEED_FOSSILIZED.value, 0),
        seeds_pruned=tally.get(EventType.SEED_PRUNED.value, 0),
        parameters_host=sum(p.numel() for p in model.get_host_parameters()),
        parameters_added=sum(p.numel() for p in model.get_seed_parameters()),
        wall_seconds=seconds, compile_count=trainer.counter.graphs, out_dir=str(config.out))
