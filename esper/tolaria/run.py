"""``esper grow``: a whole run, from data to report, checkpoint and summary."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from ..checkpoint import CheckpointError, layout, load_checkpoint, save_checkpoint
from ..checkpoint.document import read_document
from ..checkpoint.format import JSON_FILE
from ..data import load_task
from ..errors import (
    DistributedTimeoutError,
    ResumeConflictError,
    RunDirectoryExistsError,
    RunDirectoryLockedError,
)
from ..leyline import EventType
from .compile_cache import CACHE_FILE, load_compile_cache, save_compile_cache
from .config import GrowConfig
from .data_parallel import NullWriter, dump_replica, make_trainer
from .display import Progress, print_summary
from .distributed import DEFAULT_TIMEOUT, Replicas, session
from .hardware import autocast_dtype, resolve_device
from .progress import check_progress
from .records import RunSummary
from .report import EVENTS_FILE, GROWTH_FILE, METRICS_FILE, SUMMARY_FILE, RunWriter
from .runconfig import changeable_flags, resume_conflicts
from .rundir import check_run_dir, claim_run_dir
from .runlog import LogEnds, check_logs, trim_logs
from .trainer import CANDIDATE_PRUNED, Trainer

CHECKPOINT_DIR = "checkpoint"
# What a run writes into its directory: what --overwrite deletes before the new run.
RUN_OUTPUTS = (EVENTS_FILE, METRICS_FILE, SUMMARY_FILE, GROWTH_FILE, CHECKPOINT_DIR, CACHE_FILE)
_REFUSALS: dict[str, type[Exception]] = {
    error.__name__: error for error in (RunDirectoryExistsError, RunDirectoryLockedError,
                                        ValueError)}
_log = logging.getLogger("esper")


def run_directory(resume: Path) -> Path:
    """The run directory ``--resume`` names (it may name the run's checkpoint directory)."""
    return resume.parent if resume.name == CHECKPOINT_DIR else resume


def _progress(resume: Path) -> dict:
    """The checked trainer section of the checkpoint in ``resume`` (the document only)."""
    path = layout.resolve(run_directory(resume) / CHECKPOINT_DIR) / JSON_FILE
    return check_progress(read_document(path)["trainer"], f"{path}: trainer")


def resumed_config(resume: Path) -> GrowConfig | None:
    """The configuration of the run in ``resume`` (``out`` set to its directory), or
    ``None`` for a checkpoint written before checkpoints kept it. Reads the checkpoint
    document only.

    Raises:
        CheckpointError: no checkpoint, or one a run cannot continue from.
    """
    config = _progress(resume).get("config")
    return None if config is None else replace(config, out=run_directory(resume))


def _check_resume(config: GrowConfig, resume: Path) -> None:
    """Refuse to continue the run in ``resume`` anywhere but there, or with a setting of
    its configuration changed (other than those that may change)."""
    run_dir, out = run_directory(resume), Path(config.out)
    same = os.path.samefile(run_dir, out) if run_dir.exists() and out.exists() \
        else os.path.abspath(out) == os.path.abspath(run_dir)
    if not same:
        raise ResumeConflictError(
            f"--resume {resume}: --out {out} conflicts with the run's directory {run_dir}: a "
            f"resumed run continues in its own directory; leave --out out, or pass --out "
            f"{run_dir}")
    state = _progress(resume)
    stored = state.get("config")
    if stored is None:
        _log.warning("--resume %s: the checkpoint predates run configurations in checkpoints; "
                     "continuing with the settings given now", resume)
        return
    problems = resume_conflicts(stored, config, state["epoch"])
    if problems:
        raise ResumeConflictError(
            f"--resume {resume}: {'; '.join(problems)}. A resumed run keeps the configuration "
            f"its checkpoint holds; only {changeable_flags()} may change: drop the other "
            "options, or start a new run with --out")


def _baseline(config: GrowConfig, data,  # type: ignore[no-untyped-def]
              replicas: Replicas | None = None) -> list[float]:
    """Validation accuracy per epoch of the host alone, same data and seed."""
    alone = make_trainer(replace(config, max_seeds=0), data, replicas=replicas)
    return [alone.run_epoch().val_accuracy for _ in range(config.epochs)]


def _resume(trainer: Trainer, resume: Path, slots: tuple[str, ...],
            check: bool = True) -> LogEnds | None:
    """Restore ``trainer`` from a run directory; where its logs end at the checkpoint.

    Everything is checked before anything is changed: the checkpoint, then the
    logs against it (:func:`~esper.tolaria.runlog.check_logs`). ``check=False``
    (ranks other than 0, which write nothing) skips the logs and returns ``None``.

    Raises:
        CheckpointError: the checkpoint cannot be resumed from.
        RunLogError: a log is shorter than the checkpoint or garbled within it.
    """
    run_dir = run_directory(resume)
    if run_dir.is_dir() and not (run_dir / CHECKPOINT_DIR).exists():
        raise CheckpointError(f"{run_dir}: no checkpoint: the run stopped before its first save "
                              "completed, so there is nothing to resume; start it again "
                              "(--overwrite)")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_DIR, device=trainer.device)
    if checkpoint.optimizer is None:
        raise ValueError(f"{run_dir}: the checkpoint has no optimizer state to resume from")
    progress = check_progress(checkpoint.trainer_state, f"{run_dir / CHECKPOINT_DIR}: trainer")
    ends = (check_logs(run_dir, slots, progress["events_written"], progress["epoch"])
            if check else None)
    trainer.restore(checkpoint.model, checkpoint.optimizer, checkpoint.trainer_state)
    return ends


def grow(config: GrowConfig, resume: Path | None = None,
         console: Console | None = None, overwrite: bool = False,
         dist_timeout: float = DEFAULT_TIMEOUT.total_seconds()) -> RunSummary:
    """Run ``esper grow`` and return its summary; files go to ``config.out``.

    Arguments:
        config: the run's configuration.
        resume: a run directory (or its checkpoint directory) to continue from.
        console: where the live display goes (stdout by default).
        overwrite: replace the run already in ``config.out`` (its files listed
            in :data:`RUN_OUTPUTS` are deleted first; other files stay).
        dist_timeout: under torchrun, seconds a collective waits for the other
            ranks before the run stops (not part of the run's configuration).

    With ``resume``, ``config.out`` must be that run's directory and ``config``
    its configuration as the checkpoint keeps it, except the settings that may
    change (:data:`~esper.tolaria.runconfig.CHANGEABLE`: ``epochs`` to extend
    it, how the step compiles, where the data lies, and the settings of one
    invocation: ``quiet``, ``stop_after``); :func:`resumed_config` reads it.
    Otherwise ``config.out`` must be new or empty, or ``overwrite`` set; the run
    holds an exclusive lock on it while it lives (see :mod:`esper.tolaria.rundir`).

    Raises:
        ResumeConflictError: ``resume`` with another ``config.out`` or a setting
            that differs from the run's (each named with both values).
        RunDirectoryExistsError: ``config.out`` holds a run this one may not replace.
        RunDirectoryLockedError: another live run holds ``config.out`` (its pid is named).
        DistributedTimeoutError: under torchrun, a rank went silent for
            ``dist_timeout`` seconds; names it, and the checkpoint to resume from
            (that of the last completed epoch: saves are crash-consistent).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this with the same
    arguments: each trains on its shard (see :mod:`esper.tolaria.data_parallel`)
    and only rank 0 writes ``config.out`` and shows progress.
    """
    try:
        with session(timeout=timedelta(seconds=dist_timeout)) as replicas:
            return _grow(config, resume, console, replicas, overwrite)
    except DistributedTimeoutError as error:
        out = Path(config.out)
        saved = (f"the last completed epoch's checkpoint is intact in {out / CHECKPOINT_DIR}: "
                 f"continue with --resume {out}" if (out / CHECKPOINT_DIR).exists()
                 else "no epoch had completed, so there is no checkpoint to resume from")
        raise DistributedTimeoutError(f"{error}; the run stops, {saved}", rank=error.rank,
                                      silent=error.silent, seconds=error.seconds) from error


@contextmanager
def _run_dir(out: Path, resume: Path | None, overwrite: bool,
             replicas: Replicas | None) -> Iterator[None]:
    """The lock on the run directory for the block; under torchrun rank 0 holds it and
    every rank raises if rank 0 could not take it (one broadcast)."""
    claim = claim_run_dir(out, resume=resume, overwrite=overwrite, outputs=RUN_OUTPUTS)
    if replicas is None:
        with claim:
            yield
        return
    with ExitStack() as stack:
        refusal: Exception | None = None
        if replicas.is_main:
            try:
                stack.enter_context(claim)
            except (RunDirectoryExistsError, RunDirectoryLockedError, ValueError) as error:
                refusal = error
        text = replicas.broadcast_text(
            f"{type(refusal).__name__}\n{refusal}" if refusal is not None else None)
        if refusal is not None:
            raise refusal
        if text:
            name, _, message = text.partition("\n")
            raise _REFUSALS.get(name, RuntimeError)(f"rank 0: {message}")
        yield


def _grow(config: GrowConfig, resume: Path | None, console: Console | None,
          replicas: Replicas | None, overwrite: bool = False) -> RunSummary:
    """:func:`grow` on this process: the only one, or one rank of a torchrun job."""
    main = replicas is None or replicas.is_main
    if not main:
        console = Console(file=io.StringIO())  # one display: rank 0's
    out = Path(config.out)
    if resume is not None:  # before anything is read or written
        _check_resume(config, resume)
    if replicas is None:  # fail before loading anything; the claim below checks again
        check_run_dir(out, resume=resume, overwrite=overwrite)
    autocast_dtype(config.precision, resolve_device(config.device))  # and on this hardware
    started = time.perf_counter()
    data = load_task(config.task, data_dir=config.data_dir, seed=config.seed, limit=config.limit)
    progress = Progress(console=console, quiet=config.quiet)

    def sink(record: dict) -> None:
        writer.event(record)
        if record["kind"] == "decision":
            progress.note(f"epoch {record['epoch']}: {record['action']} {record['slot']} "
                          f"({record['blueprint_id'] or record['reason']}): {record['outcome']}")
        elif record.get("type") == EventType.COMMAND_REJECTED.value:
            payload = record["payload"]
            progress.note(f"command rejected ({payload['reason']}): {payload['detail']}")
        elif record["kind"] == "consensus":
            progress.note(f"epoch {record['epoch']}: ranks {record['dissenting']} disagree on "
                          f"the {record['item']} of {record['slot']}: not applied")

    trainer = make_trainer(config, data, sink, replicas)
    trainer.on_step, trainer.notify = progress.step, progress.note
    with _run_dir(out, resume, overwrite, replicas):
        slots = config.slots if config.max_seeds else ()
        ends = _resume(trainer, resume, slots, check=main) if resume is not None else None
        baseline = _baseline(config, data, replicas) if config.baseline else None
        if ends is not None:
            trim_logs(out, ends)  # the epoch after the checkpoint runs again
        with (RunWriter(out, slots=slots, append=ends is not None) if main else NullWriter()) \
                as writer, progress, closing(trainer):
            progress.start(config.epochs)
            if resume is not None and config.compile != "never":
                loaded = load_compile_cache(out)
                if loaded:
                    progress.note(f"loaded {loaded} compiled artifact(s) from {CACHE_FILE}")
            cached = compiled_graphs(trainer)
            last = min(config.epochs, config.stop_after or config.epochs)
            while trainer.epoch < last:
                epoch_record = trainer.run_epoch()
                if baseline is not None:
                    epoch_record = replace(epoch_record,
                                           baseline_accuracy=baseline[epoch_record.epoch - 1])
                    trainer.records[-1] = epoch_record
                writer.epoch(epoch_record)
                progress.update(epoch_record)
                if main:
                    save_checkpoint(out / CHECKPOINT_DIR, model=trainer.model,
                                    optimizer=trainer.optimizer,
                                    trainer_state=trainer.trainer_state())
                    if compiled_graphs(trainer) != cached:  # something new to keep
                        save_compile_cache(out)
                        cached = compiled_graphs(trainer)
            dump_replica(trainer, replicas)
            summary = _summary(config, trainer, baseline, time.perf_counter() - started)
            writer.finish(summary, trainer.records, baseline)
    if main:
        print_summary(summary, console)
    return summary


def compiled_graphs(trainer: Trainer) -> int:
    """Step and probe graphs ``trainer`` has compiled so far."""
    return trainer.counter.graphs + trainer.probe_counter.graphs


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
        candidates_lost=tally.get(CANDIDATE_PRUNED, 0),
        parameters_host=sum(p.numel() for p in model.get_host_parameters()),
        parameters_added=sum(p.numel() for p in model.get_seed_parameters()),
        wall_seconds=seconds, compile_count=trainer.counter.graphs,
        probe_compile_count=trainer.probe_counter.graphs,
        compile_seconds=trainer.counter.seconds + trainer.probe_counter.seconds,
        probe_compile_seconds=trainer.probe_counter.seconds,
        out_dir=str(config.out),
        contract_departures=config.departures(),
        training={"device": str(trainer.device), "precision": config.precision,
                  "optimizer": trainer.optimizer.config.name, "schedule": config.schedule,
                  "step": "compiled" if trainer.runner.compiling else "eager"},
        compile_choice=trainer.runner.why())
