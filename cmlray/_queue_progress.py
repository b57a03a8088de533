"""A live Rich view of a queue: done, in flight, failed, requeued, rate, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class QueueProgress:
    """Shows one queue's counts while the session waits on it."""

    def __init__(self, name: str, console: Console) -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(name, total=None, detail="", rate="")
        self._progress.start()

    def update(self, stats: dict[str, int]) -> None:
        finished = stats["done"] + stats["failed"]
        task = self._progress.tasks[0]
        speed = task.speed
        detail = (
            f"in flight {stats['leased']} · failed {stats['failed']} · requeued {stats['requeued']}"
        )
        self._progress.update(
            self._task,
            completed=finished,
            total=stats["total"] or None,
            detail=detail,
            rate=f"{speed:.1f}/s" if speed else "",
        )

    def finish(self, stats: dict[str, int]) -> None:
        self.update(stats)
        self._progress.stop()
