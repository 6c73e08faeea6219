"""The run directory of ``esper grow``: events, metrics, summary and growth plot.

A run writes four files into its directory::

    events.jsonl   one JSON object a line: lifecycle events and controller decisions
    metrics.csv    one row an epoch: loss, accuracy, and every slot's state
    summary.json   the :class:`RunSummary`, stamped with the Esper version
    growth.png     accuracy over epochs above one lane per slot (stages and alpha)

Example::

    with RunWriter(out_dir, slots=["early", "mid"]) as writer:
        for record in records:
            writer.epoch(record)
        writer.finish(summary, records, baseline=None)
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .._version import __version__
from .records import EpochRecord, RunSummary, SlotSnapshot

EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
GROWTH_FILE = "growth.png"

BASE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "baseline_accuracy", "lr",
                "seconds")
# The columns of runs logged before val_loss and lr: a resumed one keeps its own.
LEGACY_BASE_COLUMNS = ("epoch", "train_loss", "val_accuracy", "baseline_accuracy", "seconds")
SLOT_FIELDS = ("stage", "alpha", "seed", "blueprint", "counterfactual", "gradient_ratio")

# Colour of each stage in the slot lanes; the failure path shares shades of red.
STAGE_COLORS: dict[str, str] = {
    "UNKNOWN": "#e6e6e6",
    "DORMANT": "#e6e6e6",
    "GERMINATED": "#9ecae1",
    "TRAINING": "#3182bd",
    "BLENDING": "#fd8d3c",
    "HOLDING": "#9e9ac8",
    "FOSSILIZED": "#31a354",
    "PRUNED": "#de2d26",
    "EMBARGOED": "#fc9272",
    "RESETTING": "#fcbba1",
}
# Aliases of older revisions map onto the current names.
_STAGE_ALIASES = {"PROBATIONARY": "HOLDING", "CULLED": "PRUNED"}
_LEGEND = ("DORMANT", "GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED", "PRUNED",
           "EMBARGOED", "RESETTING")
_LANE_PAD = 0.12  # lanes span alpha in [0, 1] with this margin, so 0 and 1 stay visible


def slot_columns(slots: Sequence[str], base: Sequence[str] = BASE_COLUMNS) -> list[str]:
    """The header of ``metrics.csv`` for ``slots`` (``base``: the legacy one's, to read it)."""
    return [*base, *(f"{slot}_{name}" for slot in slots for name in SLOT_FIELDS)]


def _cell(value: object) -> object:
    """A CSV cell: ``None`` is empty, text is made safe (:func:`csv_text`)."""
    if value is None:
        return ""
    return csv_text(value) if isinstance(value, str) else value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """``text`` safe to put in a CSV cell a spreadsheet will open.

    Control characters become ``\\xNN`` escapes, and text that a spreadsheet
    would read as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or
    a carriage return) gets a leading ``'``, as OWASP advises against CSV
    injection. A seed id is the caller's text: it may be anything.
    """
    text = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _slot_cells(snapshot: SlotSnapshot | None) -> list[object]:
    if snapshot is None:
        return [""] * len(SLOT_FIELDS)
    return [_cell(v) for v in (snapshot.stage, snapshot.alpha, snapshot.seed_id,
                               snapshot.blueprint_id, snapshot.counterfactual,
                               snapshot.gradient_ratio)]


def _plain(value: Any) -> Any:
    """``value`` made JSON-ready: enums by name (IntEnum included), mappings, sequences,
    sets (sorted) and objects with ``to_dict``; anything else unknown becomes its ``str``."""
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=str)
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return str(value)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it atomically replaces ``path``
    (after an fsync), so a reader or a crash sees the old file or the new one, whole."""
    temp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        yield temp
        with temp.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


class RunWriter:
    """Writes one run directory; a context manager that closes its files.

    Arguments:
        out_dir: the run directory, created with its parents if missing.
        slots: the model's slot names, fixing the slot columns of ``metrics.csv``.
        append: continue logs already there (a resumed run, whose logs
            :mod:`esper.tolaria.runlog` checked and trimmed) instead of
            starting them.

    ``events.jsonl`` and ``metrics.csv`` (header only) exist from construction,
    are only ever appended to, and every line is flushed as it is written, so
    a crashed run keeps its log. ``summary.json`` and ``growth.png`` are
    replaced atomically.
    """

    def __init__(self, out_dir: Path | str, slots: Sequence[str] = (),
                 append: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.slots: tuple[str, ...] = tuple(slots)
        if len(set(self.slots)) != len(self.slots):
            raise ValueError(f"slot names must be unique, got {self.slots}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        self._events = (self.out_dir / EVENTS_FILE).open(mode, encoding="utf-8")
        self._metrics = (self.out_dir / METRICS_FILE).open(mode, encoding="utf-8", newline="")
        self._csv = csv.writer(self._metrics)
        self.columns = slot_columns(self.slots)
        if append:  # a resumed run writes the columns its log has (an older run's lack some)
            with (self.out_dir / METRICS_FILE).open(encoding="utf-8", newline="") as stream:
                self.columns = next(csv.reader(stream), self.columns)
        else:
            self._csv.writerow(self.columns)
            self._metrics.flush()

    def event(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line to ``events.jsonl``."""
        self._events.write(json.dumps(_plain(record)) + "\n")
        self._events.flush()

    def epoch(self, record: EpochRecord) -> None:
        """Append ``record`` as one row of ``metrics.csv``.

        Raises:
            ValueError: if the record names a slot the writer was not built with.
        """
        unknown = [s.slot for s in record.slots if s.slot not in self.slots]
        if unknown:
            raise ValueError(f"slots {unknown} are not among the writer's slots {self.slots}")
        cells: dict[str, object] = {
            "epoch": record.epoch, "train_loss": record.train_loss,
            "val_loss": _cell(record.val_loss), "val_accuracy": record.val_accuracy,
            "baseline_accuracy": _cell(record.baseline_accuracy), "lr": _cell(record.lr),
            "seconds": record.seconds}
        for slot in self.slots:
            names = (f"{slot}_{name}" for name in SLOT_FIELDS)
            cells.update(zip(names, _slot_cells(record.slot(slot)), strict=True))
        self._csv.writerow([cells[column] for column in self.columns])
        self._metrics.flush()

    def finish(self, summary: RunSummary, records: Sequence[EpochRecord],
               baseline: Sequence[float] | None = None) -> None:
        """Write ``summary.json`` and ``growth.png``, then close the logs."""
        data = {**summary.to_dict(), "esper_version": __version__}
        with _replacing(self.out_dir / SUMMARY_FILE) as temp:
            temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        with _replacing(self.out_dir / GROWTH_FILE) as temp:
            plot_growth(records, self.slots, temp, baseline=baseline,
                        title=f"{summary.task}: {summary.final_accuracy:.2f}% after "
                              f"{summary.epochs} epochs")
        self.close()

    def close(self) -> None:
        """Close the log files (idempotent)."""
        self._events.close()
        self._metrics.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _stage_runs(records: Sequence[EpochRecord], slot: str) -> Iterator[tuple[float, float, str]]:
    """``(start, width, stage)`` bands of consecutive epochs in one stage, each epoch 1 wide."""
    current: str | None = None
    start = 0.0
    last = 0.0
    for record in records:
        snapshot = record.slot(slot)
        stage = "DORMANT" if snapshot is None else snapshot.stage.upper()
        stage = _STAGE_ALIASES.get(stage, stage)
        if stage != current or record.epoch - last != 1:
            if current is not None:
                yield start, last + 0.5 - start, current
            current, start = stage, record.epoch - 0.5
        last = record.epoch
    if current is not None:
        yield start, last + 0.5 - start, current


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _alpha(snapshot: SlotSnapshot | None) -> float:
    """The alpha to draw: none for an empty slot, so dormant lanes carry no line."""
    if snapshot is None or (snapshot.seed_id is None and not snapshot.alpha):
        return math.nan
    return _finite(snapshot.alpha)


def plot_growth(records: Sequence[EpochRecord], slots: Sequence[str], path: Path | str,
                baseline: Sequence[float] | None = None, title: str | None = None) -> Path:
    """Draw the growth plot of a run and save it as a PNG.

    Arguments:
        records: the run's epochs, in order.
        slots: the slots to draw, one lane each under the accuracy axes.
        path: where to save the PNG.
        baseline: host-alone accuracy after epochs 1, 2, ...; when ``None``, the
            records' ``baseline_accuracy`` is drawn if any record has one.
        title: the figure's title; by default the final accuracy.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Each lane colours every epoch by its slot's stage and overlays the seed's
    alpha (0 at the bottom of the lane, 1 at the top) as a black line; the
    epochs of a tournament are hatched, marked ``xK`` where it began and
    ``#k won`` where candidate ``k`` was selected.
    """
    path = Path(path)
    bottom = 0.55 + (0.45 if slots else 0.0)  # inches: the x label, then the stage legend
    height = 3.4 + 0.55 * len(slots) + bottom
    fig = Figure(figsize=(8.0, height))
    grid = fig.add_gridspec(1 + len(slots), 1, height_ratios=[5.0] + [1.0] * len(slots),
                            hspace=0.12, left=0.12, right=0.97, top=1 - 0.35 / height,
                            bottom=bottom / height)
    ax = fig.add_subplot(grid[0])
    _draw_accuracy(ax, records, baseline, title)
    lane = ax
    for i, slot in enumerate(slots):
        lane = fig.add_subplot(grid[i + 1], sharex=ax)
        _draw_lane(lane, records, slot)
        ax.tick_params(labelbottom=False)
        if i < len(slots) - 1:
            lane.tick_params(labelbottom=False)
    lane.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    if slots:
        handles: list[Any] = [Patch(facecolor=STAGE_COLORS[s], label=s) for s in _LEGEND]
        handles.append(Line2D([], [], color="black", lw=1.2, label="alpha (0..1)"))
        if any(r.slot(s) is not None and r.slot(s).candidates > 1  # type: ignore[union-attr]
               for r in records for s in slots):
            handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="///",
                                 label="tournament"))
        fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 0.02 / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _draw_accuracy(ax: Any, records: Sequence[EpochRecord], baseline: Sequence[float] | None,
                   title: str | None) -> None:
    """The accuracy axes: the grown model, the host alone if known, the title and the x range."""
    epochs = [r.epoch for r in records]
    accuracy = [_finite(r.val_accuracy) for r in records]
    if baseline is None and any(r.baseline_accuracy is not None for r in records):
        base_x, base_y = epochs, [_finite(r.baseline_accuracy) for r in records]
    else:
        base_x = list(range(1, len(baseline) + 1)) if baseline else []
        base_y = [_finite(v) for v in baseline or ()]
    ax.plot(epochs, accuracy, color="#08519c", lw=2, marker="o" if len(epochs) <= 30 else None,
            ms=3, label="grown model")
    if base_x:
        ax.plot(base_x, base_y, color="#636363", lw=1.5, ls="--", label="host alone (baseline)",
                marker="o" if len(base_x) == 1 else None, ms=3)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    last = next((a for a in reversed(accuracy) if math.isfinite(a)), None)
    if title is None:
        title = "final accuracy " + ("n/a" if last is None else f"{last:.2f}%")
    ax.set_title(title)
    ax.set_xlim(min([*epochs, *base_x, 1]) - 0.5, max([*epochs, *base_x, 1]) + 0.5)


def tournament_marks(records: Sequence[EpochRecord], slot: str) -> list[tuple[int, str]]:
    """``(epoch, text)`` of each tournament in ``slot``: ``"xK"`` at its first epoch and
    ``"#k won"`` at the epoch its winner ``k`` was selected."""
    marks: list[tuple[int, str]] = []
    before: SlotSnapshot | None = None
    for record in records:
        now = record.slot(slot)
        if now is not None and now.candidates > 1 and (before is None or before.candidates == 1
                                                       or before.seed_id != now.seed_id):
            marks.append((record.epoch, f"x{now.candidates}"))
        if (now is not None and before is not None and before.candidates > 1
                and now.seed_id == before.seed_id and now.winner is not None):
            marks.append((record.epoch, f"#{now.winner} won"))
        before = now
    return marks


def _draw_tournaments(lane: Any, records: Sequence[EpochRecord], slot: str) -> None:
    for record in records:
        snapshot = record.slot(slot)
        if snapshot is not None and snapshot.candidates > 1:
            lane.broken_barh([(record.epoch - 0.5, 1.0)], (-_LANE_PAD, 1 + 2 * _LANE_PAD),
                             facecolors="none", edgecolors="#555555", hatch="///", lw=0)
    for epoch, text in tournament_marks(records, slot):
        lane.text(epoch, 0.5, text, ha="center", va="center", fontsize=7,
                  bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


def _draw_lane(lane: Any, records: Sequence[EpochRecord], slot: str) -> None:
    """One slot's lane: each epoch coloured by its stage, the seed's alpha as a black line."""
    for start, width, stage in _stage_runs(records, slot):
        lane.broken_barh([(start, width)], (-_LANE_PAD, 1 + 2 * _LANE_PAD),
                         facecolors=STAGE_COLORS.get(stage, "#e6e6e6"), edgecolors="none")
    lane.plot([r.epoch for r in records], [_alpha(r.slot(slot)) for r in records],
              color="black", lw=1.2, drawstyle="steps-mid")
    _draw_tournaments(lane, records, slot)
    lane.set_ylim(-_LANE_PAD, 1 + _LANE_PAD)
    lane.set_yticks([])
    lane.set_ylabel(slot, rotation=0, ha="right", va="center", fontsize=9)
