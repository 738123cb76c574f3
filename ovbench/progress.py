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
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: progress and status go to stderr so that stdout carries only results (tables, CSV)
stderr_console = Console(stderr=True, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Steps per second (iterations while training, images while evaluating)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- /s" if speed is None else f"{speed:.2f}/s", style="progress.data.speed")


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
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
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

    def add_task(self, description: str, total: int | None) -> TaskID | None:
        if self._progress is None:
            return None
        task = self._progress.add_task(description, total=total, status="")
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
                self.console.print(f"{self._descriptions[task]} {self._done[task]}/{self._totals[task]}  {status}", highlight=False)

    def finish(self, task: TaskID | None) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=self._totals.get(task))

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)

