"""The live view of `carebench run`: progress bars for runs, epochs and batches, and a table of finished runs.

Libraries report progress through `Callable[[int, int], None]` callbacks; this module turns those
calls into rich bars. Nothing else in carebench prints progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from carebench_cli.grid import RunSpec

_TABLE_ROWS = 12


@dataclass(frozen=True)
class FinishedRow:
    """One line of the finished-runs table."""

    spec: RunSpec
    status: str
    epochs: int | None
    val_metric: float | None
    test_metric: float | None
    test_metric_name: str
    seconds: float | None


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class GridProgress:
    """Rich live display of a grid: runs, epochs of the current run, batches of the current epoch."""

    def __init__(self, total_runs: int, *, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(bar_width=32),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
        )
        self._runs = self.progress.add_task("runs", total=total_runs, detail="")
        self._epochs: TaskID = self.progress.add_task("epochs", total=None, detail="", visible=False)
        self._batches: TaskID = self.progress.add_task("batches", total=None, detail="", visible=False)
        self.rows: list[FinishedRow] = []
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> GridProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.update(self._render())
        self._live.__exit__(exc_type, exc, traceback)

    def _table(self) -> Table:
        table = Table(title="finished runs", title_justify="left", expand=False, show_edge=False)
        for column in (
            "run",
            "model",
            "task",
            "cohort",
            "fold",
            "seed",
            "status",
            "epochs",
            "val",
            "test",
            "time",
        ):
            table.add_column(
                column, justify="right" if column in ("fold", "seed", "epochs", "val", "test") else "left"
            )
        hidden = len(self.rows) - _TABLE_ROWS
        for row in self.rows[-_TABLE_ROWS:]:
            spec = row.spec
            table.add_row(
                spec.run_id,
                spec.model,
                spec.task,
                spec.cohort,
                str(spec.fold),
                str(spec.seed),
                row.status,
                "-" if row.epochs is None else str(row.epochs),
                _number(row.val_metric),
                f"{_number(row.test_metric)} {row.test_metric_name}" if row.test_metric is not None else "-",
                "-" if row.seconds is None else f"{row.seconds:.1f}s",
            )
        if hidden > 0:
            table.caption = f"... and {hidden} earlier run(s)"
        return table

    def _render(self) -> Group:
        return Group(self.progress, self._table()) if self.rows else Group(self.progress)

    def start_run(self, spec: RunSpec) -> None:
        """Show the run that starts now."""
        detail = f"{spec.model} / {spec.task} / {spec.cohort} / fold {spec.fold} / seed {spec.seed}"
        self.progress.update(self._runs, detail=detail)
        self.progress.reset(self._epochs, total=None, visible=True, detail="")
        self.progress.reset(self._batches, total=None, visible=True, detail="")

    def show_running(self, specs: list[RunSpec]) -> None:
        """Name the runs that child processes are training now (parallel jobs: no epoch/batch bars)."""
        names = ", ".join(f"{spec.model}/{spec.task}" for spec in specs[:4])
        more = f" +{len(specs) - 4}" if len(specs) > 4 else ""
        self.progress.update(self._runs, detail=f"running: {names}{more}" if specs else "")

    def on_epoch(self, done: int, total: int) -> None:
        """Progress callback for epochs of the current run."""
        self.progress.update(self._epochs, completed=done, total=total)

    def on_batch(self, done: int, total: int) -> None:
        """Progress callback for batches of the current epoch (or prediction pass)."""
        self.progress.update(self._batches, completed=done, total=total)

    def set_phase(self, phase: str) -> None:
        """Name what the batch bar counts now (training, or prediction under a test setting)."""
        self.progress.reset(self._batches, total=None, detail=phase)

    def finish_run(self, row: FinishedRow, *, advance: bool = True) -> None:
        """Add the run to the table and advance the runs bar (not for a run left to another process)."""
        self.rows.append(row)
        if advance:
            self.progress.advance(self._runs)
        self.progress.update(self._epochs, visible=False)
        self.progress.update(self._batches, visible=False)
        self._live.update(self._render())
