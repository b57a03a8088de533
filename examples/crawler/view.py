"""What the crawl shows: a live Rich view while it runs, a summary at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

HTTP_CLASSES = {0: "no response", 2: "ok", 3: "redirect", 4: "client error", 5: "server error"}


@dataclass(frozen=True)
class Snapshot:
    """The crawl's numbers at one moment (published by the session's loop)."""

    stored_run: int = 0
    stored_total: int = 0
    queued: int = 0
    out: int = 0
    failed: int = 0
    retried: int = 0
    blocked: int = 0
    rate: float = 0.0
    elapsed: float = 0.0
    crawl_s: float = 0.0
    slowest: list[tuple[str, float, int, int]] = field(default_factory=list)
    stopping: bool = False


def _counts(snap: Snapshot) -> Table:
    table = Table(title="crawl", title_justify="left", show_edge=False)
    for column in ("stored", "queued", "in flight", "failed", "retried", "robots.txt", "pages/s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{snap.stored_run} ({snap.stored_total} in db)",
        str(snap.queued),
        str(snap.out),
        str(snap.failed),
        str(snap.retried),
        str(snap.blocked),
        f"{snap.rate:.1f}",
    )
    return table


def _hosts(snap: Snapshot) -> Table:
    table = Table(title="slowest hosts", title_justify="left", show_edge=False)
    for column in ("host", "mean ms", "fetches", "errors"):
        table.add_column(column, justify="left" if column == "host" else "right")
    for host, mean_ms, fetches, errors in snap.slowest:
        table.add_row(host, f"{mean_ms:.0f}", str(fetches), str(errors))
    return table


class CrawlView:
    """The live view: counts, rate and the slowest hosts (Rich renders it 4 times a second).

    The session's loop publishes a fresh :class:`Snapshot` after each result;
    Rich's refresh thread only reads the latest one, never the crawler's state.
    """

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.started = time.monotonic()

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __rich__(self) -> RenderableType:
        snap = self.snapshot
        note = "stopping: storing what is in flight" if snap.stopping else "crawling"
        header = Text(f"{note} · {time.monotonic() - self.started:.0f} s", style="dim")
        return Group(header, _counts(snap), _hosts(snap))


def summary_table(
    snap: Snapshot, statuses: list[tuple[int, int]], counts: dict[str, int], db: str
) -> RenderableType:
    """The end-of-run summary: this run, the database's totals by HTTP status class."""
    table = Table(title=f"crawl summary ({db})", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("pages stored this run", str(snap.stored_run))
    table.add_row("pages in the database", str(snap.stored_total))
    by_class: dict[str, int] = {}
    for status, n in statuses:
        label = HTTP_CLASSES.get(status // 100, str(status))
        by_class[label] = by_class.get(label, 0) + n
    for label, n in by_class.items():
        table.add_row(f"  {label}", str(n))
    table.add_row("retries", str(snap.retried))
    table.add_row("skipped by robots.txt (this run)", str(snap.blocked))
    table.add_row("links in the graph", str(counts["links"]))
    table.add_row("frontier left", str(counts["frontier"]))
    table.add_row("crawl time (workers running)", f"{snap.crawl_s:.2f} s")
    table.add_row("pages/s", f"{snap.rate:.1f}")
    return Group(table, _hosts(snap))
