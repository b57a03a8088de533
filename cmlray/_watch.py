"""``cmlray.watch()``: a live table of the workers until they are decided.

On a terminal a Rich ``Live`` panel sits under the scrolling output: the
relay prints workers' lines through the same console, and ``Live`` moves
them above the panel. The panel keeps to the terminal's height (the rows
that matter most stay, the rest are summed up, see :mod:`cmlray._table`).
In Jupyter the table is one HTML display, updated in place. Elsewhere
(pipes, files, CI logs) a plain line counting workers by status is printed
each time those counts change, and the final table at the end.

The display is refreshed every ``refresh_s`` and at once when the last
worker is decided (the registry's condition variable wakes it).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cmlray import _lifecycle, _refs
from cmlray._checks import check_seconds
from cmlray._record import WorkerRecord
from cmlray._session import Session
from cmlray._table import WorkerList, summary_line, worker_table

REFRESH_S = 0.25
_PANEL_SHARE = 2 / 3  # of the terminal's height; the rest shows the scrolling output
_PANEL_CHROME_LINES = 3  # title, header, a spare line for the cursor


def watch(
    workers: Any = None, *, console: Console | None = None, refresh_s: float = REFRESH_S
) -> WorkerList:
    """Show a live table of workers until every one has ended, or Ctrl-C.

    Ctrl-C stops watching, not the workers. Counts by status head the table,
    then a row per worker: name, status, node, run time, CPU cores used of
    those requested, memory (GiB) used of that requested, last line printed.

    Args:
        workers: an id, a worker dict, a worker name, or a list of them;
            None: every worker of the session, those launched meanwhile too.
        console: where to show it; default the console workers' output goes
            to (so their lines scroll above the panel).
        refresh_s: seconds between two refreshes (> 0).

    Returns:
        The watched workers' descriptions when watching ended.

    Raises:
        ValueError: an id or name this session never launched, or a bad
            ``refresh_s``. TypeError: arguments of the wrong type.
    """
    refresh_s = check_seconds("refresh_s", refresh_s)
    if console is not None and not isinstance(console, Console):
        raise TypeError(f"console must be a rich.console.Console or None, got {console!r}")
    session = _lifecycle.current(create=False)
    registry = session.registry if session is not None else None
    chosen = None if workers is None else _refs.known_ids(registry, workers, "workers")
    if session is None:
        return WorkerList()

    def ids() -> list[str]:
        return session.registry.ids() if chosen is None else chosen

    with contextlib.suppress(KeyboardInterrupt):  # stop watching; the workers go on
        follow(session, ids, console or session.relay.console, refresh_s)
    return WorkerList(session.registry.describe(ids()))


def _final(record: WorkerRecord) -> bool:
    return record.final


def follow(
    session: Session,
    ids: Callable[[], list[str]],
    console: Console,
    refresh_s: float,
    *,
    timeout_s: float | None = None,
    transient: bool = False,
) -> bool:
    """Show the workers ``ids()`` until all have ended or ``timeout_s`` passed.

    Returns whether they all ended. KeyboardInterrupt goes to the caller.
    """
    registry = session.registry
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def snapshot() -> list[dict[str, Any]]:
        return registry.describe(ids())

    display = _display_for(console, transient)
    with display:
        display.show(snapshot())
        while True:
            wait_s = refresh_s if deadline is None else min(refresh_s, deadline - time.monotonic())
            done = registry.wait_until(ids(), _final, max(0.0, wait_s))
            display.show(snapshot())
            if done or (deadline is not None and time.monotonic() >= deadline):
                display.end(snapshot())
                return done


class _Display:
    """How the table is shown on one kind of console (a context manager)."""

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def show(self, workers: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def end(self, workers: Sequence[dict[str, Any]]) -> None:
        self.show(workers)


def _display_for(console: Console, transient: bool) -> _Display:
    if console.is_jupyter:
        return _JupyterDisplay()
    if console.is_terminal:
        return _LiveDisplay(console, transient)
    return _PlainDisplay(console)


class _LiveDisplay(_Display):
    """A Rich ``Live`` panel under the scrolling output."""

    def __init__(self, console: Console, transient: bool) -> None:
        self.console = console
        self.live = Live(
            console=console,
            auto_refresh=False,
            transient=transient,
            vertical_overflow="ellipsis",
        )

    def __enter__(self) -> _LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.live.stop()

    def show(self, workers: Sequence[dict[str, Any]]) -> None:
        height = self.console.size.height
        max_rows = max(1, int(height * _PANEL_SHARE) - _PANEL_CHROME_LINES)
        self.live.update(worker_table(workers, max_rows=max_rows), refresh=True)


class _PlainDisplay(_Display):
    """No terminal: a counts line when the counts change, the whole table at the end."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: str | None = None

    def show(self, workers: Sequence[dict[str, Any]]) -> None:
        line = summary_line(workers)
        if line != self.last:
            self.last = line
            self.console.print(Text(f"[cmlray] {line}"), soft_wrap=True)

    def end(self, workers: Sequence[dict[str, Any]]) -> None:
        self.show(workers)
        self.console.print(worker_table(workers, title=False))


class _JupyterDisplay(_Display):
    """One HTML display in the cell, updated in place."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.last: str | None = None

    def show(self, workers: Sequence[dict[str, Any]]) -> None:
        ipython_display: Any = importlib.import_module("IPython.display")  # untyped
        html = WorkerList(workers)._repr_html_()
        if html == self.last:
            return
        self.last = html
        if self.handle is None:
            self.handle = ipython_display.display(ipython_display.HTML(html), display_id=True)
        else:
            self.handle.update(ipython_display.HTML(html))
