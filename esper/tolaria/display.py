"""The console of ``esper grow``: a live slot table, or plain lines for logs.

Example::

    with Progress(quiet=False) as progress:
        progress.start(total_epochs=25)
        for record in run():
            progress.update(record)
            progress.note(f"epoch {record.epoch}: germinate mid (norm)")
    print_summary(summary)
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..leyline.constants import PROGRESS_LINE_SECONDS, STEP_REFRESH_SECONDS
from .records import EpochRecord, RunSummary, SlotSnapshot

# Rich style of each stage in the slot table.
STAGE_STYLES: dict[str, str] = {
    "UNKNOWN": "dim", "DORMANT": "dim", "GERMINATED": "cyan", "TRAINING": "blue",
    "BLENDING": "dark_orange", "HOLDING": "medium_purple", "FOSSILIZED": "bold green",
    "PRUNED": "bold red", "EMBARGOED": "red", "RESETTING": "red",
}
_IDLE = frozenset({"UNKNOWN", "DORMANT"})
_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("slot", "left"), ("stage", "left"), ("alpha", "right"), ("seed (blueprint)", "left"),
    ("Δacc", "right"), ("grad ratio", "right"), ("last gate", "left"))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _seed(snapshot: SlotSnapshot) -> str:
    if snapshot.seed_id is None:
        return "-"
    return snapshot.seed_id + (f" ({snapshot.blueprint_id})" if snapshot.blueprint_id else "")


def format_epoch_line(record: EpochRecord, total_epochs: int | None = None) -> str:
    """One plain line for ``record``: the numbers, then every slot that holds something."""
    of = f"/{total_epochs}" if total_epochs else ""
    parts = [f"epoch {record.epoch}{of}", f"loss {record.train_loss:.4f}",
             f"acc {record.val_accuracy:.2f}%"]
    if record.baseline_accuracy is not None:
        parts.append(f"base {record.baseline_accuracy:.2f}%")
    parts.append(f"{record.seconds:.1f}s")
    for s in record.slots:
        if s.stage.upper() not in _IDLE:
            many = f"x{s.candidates}" if s.candidates > 1 else ""
            blueprint = f"({s.blueprint_id}{many})" if s.blueprint_id else ""
            parts.append(f"{s.slot}={s.stage}{blueprint} a={s.alpha:.2f}")
    return "  ".join(parts)


def slot_table(record: EpochRecord) -> Table:
    """The slots of ``record``: stage, alpha, seed, contribution, gradient ratio, last gate."""
    table = Table(expand=False, header_style="bold")
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify)
    for s in record.slots:
        stage = s.stage.upper()
        gate_style = "red" if s.last_gate and "fail" in s.last_gate.lower() else "green"
        table.add_row(s.slot, Text(s.stage, style=STAGE_STYLES.get(stage, "")),
                      f"{s.alpha:.2f}", _seed(s), _num(s.counterfactual, "+.2f"),
                      _num(s.gradient_ratio, ".3f"),
                      Text(s.last_gate or "-", style=gate_style if s.last_gate else "dim"))
    return table


class Progress:
    """Shows a run as it trains.

    Arguments:
        console: where to draw; a new :class:`rich.console.Console` on stdout by default.
        quiet: print one plain line per epoch and no live display (for logs).

    Off a terminal (``console.is_terminal`` false) the lines are plain too. In
    plain mode :meth:`note` prints an indented line; live, it prints above the table.
    :meth:`step` shows the steps of the epoch under way (a bar live, a periodic
    line in plain mode).
    """

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console if console is not None else Console()
        self.quiet = quiet
        self.plain = quiet or not self.console.is_terminal
        self.total_epochs: int | None = None
        self.last: EpochRecord | None = None
        self.best_accuracy: float | None = None
        self._seconds = 0.0
        self._live: Live | None = None
        self._steps: tuple[int, int] | None = None  # (done, total) of the epoch under way
        self._shown = time.monotonic()  # when a step was last shown

    def _line(self, text: str) -> None:
        file = self.console.file
        file.write(text + "\n")
        file.flush()

    def start(self, total_epochs: int | None = None) -> None:
        """Begin showing a run of ``total_epochs`` epochs (idempotent)."""
        self.total_epochs = total_epochs
        if not self.plain and self._live is None:
            self._live = Live(self._render(), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.start(refresh=True)

    def update(self, record: EpochRecord) -> None:
        """Show a finished epoch."""
        self.last = record
        self._steps = None
        self._shown = time.monotonic()
        self._seconds += record.seconds
        if self.best_accuracy is None or record.val_accuracy > self.best_accuracy:
            self.best_accuracy = record.val_accuracy
        if self.plain:
            self._line(format_epoch_line(record, self.total_epochs))
            return
        if self._live is None:
            self.start(self.total_epochs)
        assert self._live is not None
        self._live.update(self._render(), refresh=True)

    def step(self, done: int, total: int) -> None:
        """Show the epoch under way at step ``done`` of ``total``: live, a second bar
        (redrawn at most every :data:`STEP_REFRESH_SECONDS`); plain, a line every
        :data:`PROGRESS_LINE_SECONDS` (a quick epoch prints none)."""
        self._steps = (done, total)
        now = time.monotonic()
        if self.plain:
            if now - self._shown >= PROGRESS_LINE_SECONDS and done < total:
                epoch = (self.last.epoch if self.last is not None else 0) + 1
                self._line(f"  epoch {epoch}: step {done}/{total} ({100 * done // total}%)")
                self._shown = now
            return
        if self._live is not None and (now - self._shown >= STEP_REFRESH_SECONDS
                                       or done == total):
            self._live.update(self._render(), refresh=True)
            self._shown = now

    def note(self, text: str) -> None:
        """Show an event worth a line, e.g. ``"epoch 5: germinate mid (norm)"``."""
        if self._live is not None:
            self._live.console.print(Text(text, style="italic"))
        else:
            self._line("  " + text)

    def stop(self) -> None:
        """Stop the live display, leaving its last frame on screen (idempotent)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> RenderableType:
        record, total = self.last, self.total_epochs
        done = 0 if record is None else record.epoch
        bar = ProgressBar(total=float(total) if total else None, completed=float(done), width=30)
        timing = Text(f"epoch {done}" + (f"/{total}" if total else ""), style="bold")
        if record is not None and total and done:
            eta = self._seconds / done * max(total - done, 0)
            timing.append(f"  {record.seconds:.1f}s/epoch  eta {eta:.0f}s", style="not bold dim")
        bar_line = Table.grid(padding=(0, 1))
        bar_line.add_row(bar, timing)
        if self._steps is not None:
            steps_done, steps = self._steps
            bar_line.add_row(ProgressBar(total=float(steps), completed=float(steps_done), width=30),
                             Text(f"epoch {done + 1}: step {steps_done}/{steps}", style="dim"))
        if record is None:
            return bar_line
        numbers = Text.assemble(("acc ", ""), (f"{record.val_accuracy:.2f}%", "bold"),
                                f"  best {self.best_accuracy:.2f}%  loss {record.train_loss:.4f}")
        if record.baseline_accuracy is not None:
            numbers.append(f"  host alone {record.baseline_accuracy:.2f}%", style="dim")
        parts: list[RenderableType] = [bar_line, numbers]
        if record.slots:
            parts.append(slot_table(record))
        return Group(*parts)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m {rest:04.1f}s"
    return f"{minutes}m {rest:04.1f}s" if minutes else f"{rest:.1f}s"


def render_summary(summary: RunSummary) -> Table:
    """The run's outcome as a two-column table."""
    table = Table(title=f"esper grow: {summary.task}", show_header=False, title_style="bold")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("epochs", str(summary.epochs))
    if summary.training:
        table.add_row("trained", ", ".join(summary.training.values()))
    table.add_row("final accuracy", f"{summary.final_accuracy:.2f}%")
    if summary.baseline_accuracy is not None:
        gain = summary.final_accuracy - summary.baseline_accuracy
        table.add_row("baseline accuracy (host alone)",
                      f"{summary.baseline_accuracy:.2f}% ({gain:+.2f} pts)")
    table.add_row("seeds germinated", str(summary.seeds_germinated))
    table.add_row("seeds fossilized", str(summary.seeds_fossilized))
    table.add_row("seeds pruned", str(summary.seeds_pruned))
    if summary.candidates_lost:
        table.add_row("candidates lost", str(summary.candidates_lost))
    table.add_row("parameters (host)", f"{summary.parameters_host:,}")
    share = f"{summary.parameters_added_percent:+.2f}% of host"
    table.add_row("parameters added", f"{summary.parameters_added:,} ({share})")
    table.add_row("wall time", _duration(summary.wall_seconds))
    compiled = f"{summary.compile_count} step + {summary.probe_compile_count} probe"
    if summary.compile_count or summary.probe_compile_count:
        compiled += f" in {_duration(summary.compile_seconds)}"
    table.add_row("graphs compiled", compiled)
    if summary.compile_choice:
        table.add_row("compiled because" if summary.training.get("step") == "compiled"
                      else "eager because", summary.compile_choice)
    table.add_row("output", summary.out_dir)
    if summary.contract_departures:
        table.add_row("departures from the contract", ", ".join(
            f"{name} {d['value']} (contract {d['contract']})"
            for name, d in summary.contract_departures.items()))
    return table


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """Print :func:`render_summary` to ``console`` (stdout by default)."""
    (console if console is not None else Console()).print(render_summary(summary))
