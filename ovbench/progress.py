"""Progress bars for long loops: rich on a terminal, one line per finished task otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Column
from rich.text import Text

#: progress and status go to stderr so that stdout carries only results (tables, CSV)
stderr_console = Console(stderr=True, soft_wrap=True, emoji=False)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _speed(task: Task) -> float | None:
    return task.finished_speed or task.speed


def _remaining(task: Task) -> float | None:
    speed = _speed(task)
    if task.total is None or not speed:
        return None
    return max(task.total - task.completed, 0) / speed


class TimingColumn(ProgressColumn):
    """One rate, one elapsed time and one ETA, each labelled ("3.5 it/s elapsed 0:00:12 eta 0:00:05")."""

    def render(self, task: Task) -> Text:
        return Text(timing_text(task), style="progress.data.speed")


def timing_text(task: Task) -> str:
    speed = _speed(task)
    unit = task.fields.get("unit", "it")
    rate = f"-- {unit}/s" if speed is None else f"{speed:.1f} {unit}/s"
    return f"{rate} elapsed {format_duration(task.elapsed or 0.0)} eta {format_duration(_remaining(task))}"


class ProgressReporter:
    """A thin wrapper so loops do not care whether bars are shown."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or stderr_console
        self.quiet = quiet
        self._progress: Progress | None = None
        self._totals: dict[TaskID, int | None] = {}
        self._descriptions: dict[TaskID, str] = {}
        self._done: dict[TaskID, int] = {}
        if not quiet:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(bar_width=10),
                MofNCompleteColumn(),
                # never wrapped (a wrapped cell shows only its first line); on a narrow terminal
                # the status is cut first
                TimingColumn(table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[status]}", markup=False, table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=self.console,
                transient=False,
                disable=not self.console.is_terminal,
            )

    def __enter__(self) -> "ProgressReporter":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add_task(self, description: str, total: int | None, unit: str = "it") -> TaskID | None:
        """A bar of `total` steps; `unit` names a step in the rate ("it", "img")."""
        if self._progress is None:
            return None
        task = self._progress.add_task(description, total=total, status="", unit=unit)
        self._totals[task] = total
        self._descriptions[task] = description
        self._done[task] = 0
        return task

    def advance(self, task: TaskID | None, amount: int = 1, status: str | None = None) -> None:
        if self._progress is not None and task is not None:
            fields = {"status": status} if status is not None else {}
            self._progress.update(task, advance=amount, **fields)
            self._done[task] += amount
            if status and not self.console.is_terminal:
                # no live bar in a log file: each status update becomes one plain line
                line = f"{self._descriptions[task]} {self._done[task]}/{self._totals[task]}  {status}  {timing_text(self._progress.tasks[self._index(task)])}"
                self.console.print(line, highlight=False, markup=False)

    def finish(self, task: TaskID | None) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=self._totals.get(task))

    def _index(self, task: TaskID) -> int:
        return next(i for i, candidate in enumerate(self._progress.tasks) if candidate.id == task)

    def log(self, message: str) -> None:
        """A plain line: messages carry paths and names, never rich markup."""
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)

