"""Workers at a glance: a Rich table, an HTML table and a one-line summary.

Pure functions of worker dicts (``list_workers()``'s), so they are tested on
a captured console. The columns: name, status, node, run time, CPU cores in
use of those requested, memory in use of that requested (GiB; its peak once
ended), and the last line the worker printed. Nothing from a worker's environment is shown (it
may hold secrets), and a worker's text is shown literally: escapes removed,
never read as Rich markup or HTML.

A group too large for the space given keeps the rows that matter most
(failed first, then running, starting, waiting, ended) in launch order, and
sums up the rest by status in a last row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cmlray._sanitize import strip_escapes

if TYPE_CHECKING:
    from rich.table import Table

Worker = Mapping[str, Any]

STATUS_ORDER = ("running", "starting", "scheduling", "succeeded", "failed", "stopped", "timedout")
STATUS_STYLE = {
    "scheduling": "dim",
    "starting": "cyan",
    "running": "bold blue",
    "succeeded": "green",
    "failed": "bold red",
    "timedout": "red",
    "stopped": "yellow",
}
# Which rows stay when not all fit: lower first.
_ROW_PRIORITY = {"failed": 0, "timedout": 0, "running": 1, "starting": 2, "scheduling": 3}
_ENDED_PRIORITY = 4
COLUMNS = ("name", "status", "node", "time", "cpu", "memory GiB", "last line")


def counts(workers: Iterable[Worker]) -> Counter[str]:
    """How many workers are in each status."""
    return Counter(str(worker["status"]) for worker in workers)


def summary_line(workers: Sequence[Worker]) -> str:
    """``3 workers: 2 running, 1 succeeded``, statuses in their life's order."""
    by_status = counts(workers)
    known = [s for s in STATUS_ORDER if by_status[s]]
    others = sorted(s for s in by_status if s not in STATUS_ORDER)
    parts = [f"{by_status[s]} {s}" for s in known + others]
    noun = "worker" if len(workers) == 1 else "workers"
    return f"{len(workers)} {noun}: " + (", ".join(parts) if parts else "none")


def format_duration(seconds: float | None) -> str:
    """``4.2s``, ``3m07s``, ``2h05m``; ``-`` when it has not run."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _amount(used: float | None, requested: float, digits: int) -> str:
    shown = "-" if used is None else f"{used:.{digits}f}"
    return f"{shown}/{requested:g}"


def _node(worker: Worker) -> str:
    node_id = worker.get("node_id")
    return str(node_id)[:8] if node_id else "-"


def last_line(worker: Worker) -> str:
    """The last line the worker printed (escapes removed), else its reason if it ended."""
    tail = worker.get("tail") or []
    if tail:
        return strip_escapes(str(tail[-1]))
    return strip_escapes(str(worker.get("reason") or ""))


def row_cells(worker: Worker) -> list[str]:
    """The plain text of a worker's row, in ``COLUMNS`` order.

    An ended worker shows its peak memory, and its CPU averaged over its run.
    """
    ended = worker.get("finished_at") is not None
    memory = worker.get("memory_peak" if ended else "memory_used")
    return [
        strip_escapes(str(worker["name"])),
        str(worker["status"]),
        _node(worker),
        format_duration(worker.get("duration")),
        _amount(worker.get("cpu_used"), float(worker["cpu"]), 2),
        _amount(memory, float(worker["memory"]), 2),
        last_line(worker),
    ]


def choose_rows(
    workers: Sequence[Worker], max_rows: int | None
) -> tuple[list[Worker], list[Worker]]:
    """(rows shown in launch order, rows left out) for at most ``max_rows`` rows.

    When some are left out, one row goes to their summary, so ``max_rows - 1``
    workers are shown.
    """
    if max_rows is None or len(workers) <= max_rows:
        return list(workers), []
    keep = max(0, max_rows - 1)
    ranked = sorted(
        range(len(workers)),
        key=lambda i: (_ROW_PRIORITY.get(str(workers[i]["status"]), _ENDED_PRIORITY), i),
    )
    chosen = set(ranked[:keep])
    shown = [w for i, w in enumerate(workers) if i in chosen]
    left = [w for i, w in enumerate(workers) if i not in chosen]
    return shown, left


def worker_table(
    workers: Sequence[Worker], *, max_rows: int | None = None, title: bool = True
) -> Table:
    """The Rich table of ``workers``: a row each, at most ``max_rows`` rows.

    Its title counts the workers by status. (Rich's table is imported here,
    when a table is drawn: 6 ms that ``launch_workers`` need not pay.)
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(summary_line(workers), style="bold") if title else None,
        title_justify="left",
        expand=False,
        pad_edge=False,
        box=None,
        header_style="bold",
    )
    for column in COLUMNS:
        numeric = column in ("time", "cpu", "memory GiB")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            ratio=1 if column == "last line" else None,
            min_width=8 if column == "last line" else None,
        )
    shown, left = choose_rows(workers, max_rows)
    for worker in shown:
        cells = [Text(cell) for cell in row_cells(worker)]
        cells[1].stylize(STATUS_STYLE.get(str(worker["status"]), ""))
        cells[6].stylize("dim")
        table.add_row(*cells)
    if left:
        more = summary_line(left).replace(" workers:", " more:").replace(" worker:", " more:")
        table.add_row(Text(f"... {more}", style="italic"), *[""] * (len(COLUMNS) - 1))
    return table


def html_table(workers: Sequence[Worker]) -> str:
    """An HTML table of ``workers`` (every row), for Jupyter; all text escaped."""
    import html  # (here: 2.5 ms that ``launch_workers`` need not pay)

    head = "".join(f"<th>{html.escape(column)}</th>" for column in ("id", *COLUMNS))
    rows = []
    for worker in workers:
        cells = [str(worker["id"]), *row_cells(worker)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    caption = html.escape(summary_line(workers))
    return (
        f'<table class="cmlray-workers"><caption style="text-align:left">{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


class WorkerList(list[dict[str, Any]]):
    """``list_workers()``'s answer: a plain list of plain dicts, shown as a table.

    CML code indexes it and reads its dicts; a notebook shows it as an HTML
    table and a Rich console as a Rich table (``console.print(workers)``).
    """

    def _repr_html_(self) -> str:
        return html_table(self)

    def __rich__(self) -> Table:
        return worker_table(self)
