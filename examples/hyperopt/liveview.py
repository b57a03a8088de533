"""The sweep's live view: progress, a best-so-far leaderboard, the workers' output.

Workers' lines are printed by cmlray on the same Rich console, so Rich puts
them above the live display as they arrive: the view is the last few lines
of the terminal, redrawn in place, with the output scrolling above it. On a
console that is not a terminal (a pipe, a CI log) nothing is redrawn: the
sweep prints one plain ``[sweep]`` line per result instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from searchspace import describe
from studydb import Trial


def leaderboard(trials: Sequence[Trial], title: str = "best so far") -> Table:
    """The trials (best first) as a table: rank, number, score, parameters."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("rank", justify="right")
    table.add_column("#", justify="right")
    table.add_column("mean score", justify="right", style="bold")
    table.add_column("± std", justify="right")
    table.add_column("fit s", justify="right")
    table.add_column("parameters")
    for rank, trial in enumerate(trials, 1):
        table.add_row(
            str(rank),
            str(trial.number),
            f"{trial.mean_score:.4f}",
            f"{trial.std_score:.4f}",
            f"{trial.fit_seconds:.1f}" if trial.fit_seconds is not None else "-",
            Text(describe(trial.params)),
        )
    return table


class SweepView:
    """Progress bar, counts line and leaderboard, live while the sweep runs.

    Args:
        console: the console the session's workers print to.
        study: the study's name (the progress bar's label).
        total: configurations in the study when complete.
        done: of those, already done before this run.
    """

    def __init__(self, console: Console, study: str, total: int, done: int) -> None:
        self.console = console
        self.interactive = console.is_terminal or console.is_jupyter
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self.progress.add_task(study, total=total, completed=done)
        self._counts = Text("starting workers...", style="dim")
        self._leaders: Sequence[Trial] = ()
        self._live = Live(self, console=console, refresh_per_second=4, transient=True)

    def __rich__(self) -> Group:
        parts: list[Any] = [self.progress, self._counts]
        if self._leaders:
            parts.append(leaderboard(self._leaders))
        return Group(*parts)

    def __enter__(self) -> SweepView:
        if self.interactive:
            self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.interactive:
            self._live.stop()

    def update(self, finished: int, stats: dict[str, int], leaders: Sequence[Trial]) -> None:
        """A result is in: move the bar, the counts and the leaderboard."""
        self.progress.update(self._task, completed=finished)
        self._counts = Text(
            f"fits training {stats.get('leased', 0)} · queued {stats.get('pending', 0)}"
            f" · failed {stats.get('failed', 0)} · retried {stats.get('requeued', 0)}",
            style="dim",
        )
        self._leaders = leaders
        if not self.interactive:
            self._plain_line(finished, leaders)

    def _plain_line(self, finished: int, leaders: Sequence[Trial]) -> None:
        total = self.progress.tasks[0].total
        best = f" · best {leaders[0].mean_score:.4f} (#{leaders[0].number})" if leaders else ""
        self.console.print(Text(f"[sweep] {finished}/{total:.0f} done{best}"), soft_wrap=True)

    def note(self, message: str, style: str = "yellow") -> None:
        """A line from the sweep itself, above the live view."""
        self.console.print(Text(message, style=style), soft_wrap=True)
