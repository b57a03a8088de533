"""The session's side of a crawl: frontier, queue, workers, database, live view.

The loop: put batches of URLs on a ``cmlray.Queue``; for each result
(``queue.as_completed()``) store the batch's pages in one transaction,
de-duplicate their links, add the new ones to the frontier (in memory and in
the database), and put the next batches; close the queue once nothing is
out and nothing more may go (frontier empty, page budget spent, or a stop
asked for). Workers end by themselves when the queue is drained.

Scope, robots.txt, redirects, retries and de-duplication are all decided
here, in one process, so they hold across workers.
"""

from __future__ import annotations

import _thread
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

import cmlray
from crawler.config import FETCH_ENV, QUEUE_ENV, CrawlConfig
from crawler.records import Record, failure, now_iso
from crawler.robots import Robots, fetch_robots
from crawler.scheduler import Entry, Limits, Scheduler
from crawler.store import FrontierRow, Store, Writes
from crawler.urls import host_of, normalize, origin_of
from crawler.view import CrawlView, Snapshot, summary_table

WORKER_SCRIPT = Path(__file__).with_name("crawl_worker.py")
FINAL = {"succeeded", "failed", "stopped", "timedout"}


class WorkersLostError(RuntimeError):
    """Every worker ended while URLs were still out: nobody is left to fetch them."""


@dataclass
class Counters:
    """What this run did (the database holds the totals)."""

    stored: int = 0
    failed: int = 0
    retried: int = 0
    blocked: int = 0
    started: float = field(default_factory=time.monotonic)
    crawl_started: float | None = None
    crawl_ended: float | None = None

    def rate(self) -> float:
        """Pages stored per second since the workers were running."""
        if self.crawl_started is None:
            return 0.0
        end = self.crawl_ended or time.monotonic()
        return self.stored / max(end - self.crawl_started, 1e-9)


class Crawler:
    """One run of a crawl against one database (resumed if it holds a crawl).

    Args:
        config: the crawl's settings.
        console: where the live view and the summary go.
        on_result: called after each queue result is stored (tests use it
            to stop or break a crawl midway).
    """

    def __init__(
        self,
        config: CrawlConfig,
        *,
        console: Console | None = None,
        on_result: Callable[[Crawler], None] | None = None,
    ) -> None:
        self.config = config
        self.console = console or Console()
        self.on_result = on_result
        self.store = Store(config.db)
        self.counters = Counters()
        self.stopping = False
        self.lost: str | None = None
        self.view = CrawlView()
        self.allowed = set(config.allow_hosts) | {
            host_of(url) for url in map(normalize, config.seeds) if url
        }
        self.robots: dict[str, Robots] = {}
        self._resume()

    def _resume(self) -> None:
        """Pick up what the database holds: stored pages, the frontier, robots.txt files."""
        config, fetch = self.config, self.config.fetch
        limits = Limits(
            config.workers, fetch.concurrency, fetch.per_host, fetch.delay, config.max_pages
        )
        resumed = self.store.load()
        self.scheduler = Scheduler(limits, stored=resumed.pages)
        self.seen = resumed.seen
        for host, (status, body) in resumed.robots.items():
            self._adopt_robots(host, Robots(status, body))
        for row in resumed.frontier:
            self.scheduler.add(Entry(row.url, row.depth, row.attempts, row.hops))

    # --- discovery: scope, depth, robots.txt, duplicates ---------------------------------

    def _adopt_robots(self, host: str, robots: Robots) -> None:
        self.robots[host] = robots
        crawl_delay = robots.delay(self.config.fetch.user_agent)
        self.scheduler.host(host, max(self.config.fetch.delay, crawl_delay))

    def _robots_for(self, url: str, writes: Writes) -> Robots:
        """The URL's host's robots.txt, fetched (once per host) if not known yet."""
        host = host_of(url)
        if host not in self.robots:
            fetch = self.config.fetch
            status, body = fetch_robots(origin_of(url), fetch.user_agent, fetch.timeout)
            self._adopt_robots(host, Robots(status, body))
            writes.robots.append((host, status, body, now_iso()))
        return self.robots[host]

    def discover(self, url: str | None, depth: int, hops: int, writes: Writes) -> str | None:
        """Add a URL to the frontier unless it is a duplicate or not to be crawled.

        Returns:
            Why the URL will not be fetched (None when it is new and queued,
            or a duplicate).
        """
        if url is None or url in self.seen:
            return None
        if host_of(url) not in self.allowed:
            return f"out of scope: {url}"
        if depth > self.config.max_depth:
            return f"deeper than {self.config.max_depth}: {url}"
        robots = self._robots_for(url, writes)
        self.seen.add(url)
        if not robots.allows(url, self.config.fetch.user_agent):
            writes.skipped.append((url, "disallowed by robots.txt", depth))
            self.counters.blocked += 1
            return f"disallowed by robots.txt: {url}"
        self.scheduler.add(Entry(url, depth, hops=hops))
        writes.frontier.append(FrontierRow(url, depth, 0, hops))
        return None

    # --- results -------------------------------------------------------------------------

    def _store_page(self, record: Record, entry: Entry, writes: Writes) -> None:
        page = {**record, "depth": entry.depth, "attempts": entry.attempts}
        for link in record["links"]:
            writes.links.append((entry.url, link))
            self.discover(link, entry.depth + 1, 0, writes)
        if record["location"] and entry.hops >= self.config.max_redirects:
            page["error"] = f"more than {self.config.max_redirects} redirects in a row"
        elif record["location"]:
            why = self.discover(record["location"], entry.depth, entry.hops + 1, writes)
            page["error"] = page["error"] or (why and f"redirect not followed: {why}")
        writes.pages.append(page)
        self.scheduler.stored += 1
        self.counters.stored += 1
        self.counters.failed += record["status"] is None or record["status"] >= 500

    def _record(self, record: Record, writes: Writes, now: float) -> None:
        """One URL's outcome: retried after a backoff, or stored with its links."""
        status = record["status"]
        failed = status is None or status >= 500
        entry = self.scheduler.done(record["url"], record.get("elapsed_ms"), failed)
        entry.attempts += 1
        if record["retryable"] and entry.attempts <= self.config.retries:
            self.scheduler.retry(entry, now + self.config.backoff * 2 ** (entry.attempts - 1))
            writes.retries.append(FrontierRow(entry.url, entry.depth, entry.attempts, entry.hops))
            self.counters.retried += 1
        else:
            self._store_page(record, entry, writes)

    def handle(self, result: cmlray.QueueResult) -> None:
        """Store one queue result (a batch of records) in one transaction."""
        self.scheduler.batch_done()
        if result.ok:
            records = result.result
        else:  # the worker's code raised for the whole batch, max_attempts times
            error = f"worker failed: {result.error}"
            records = [failure(task["url"], error, retryable=False) for task in result.item]
        writes = Writes()
        now = time.time()
        for record in records:
            self._record(record, writes, now)
        self.store.write(writes)

    # --- the loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: send nothing more, store what is out, then end."""
        self.stopping = True

    def on_sigint(self, *_: Any) -> None:
        """SIGINT handler: the first stops gracefully, the second aborts."""
        if self.stopping or self.lost:
            raise KeyboardInterrupt
        self.console.log("stopping: storing the pages in flight (Ctrl-C again to abort)")
        self.stop()

    def _seed(self) -> None:
        writes = Writes()
        for seed in self.config.seeds:
            url = normalize(seed)
            if url is None:
                raise ValueError(f"not an http(s) URL: {seed!r}")
            self.discover(url, 0, 0, writes)
        self.store.write(writes)

    def _dispatch(self, queue: cmlray.Queue) -> bool:
        """Put the next batches; True while the queue stays open."""
        if not self.stopping:
            batches = self.scheduler.next_batches(time.time())
            if batches:
                queue.put_many(batches)
        if self.scheduler.batches_out == 0 or self.stopping:
            queue.close()
            return False
        return True

    def _consume(self, queue: cmlray.Queue) -> None:
        is_open = True
        for result in queue.as_completed():
            self.handle(result)
            if is_open:
                is_open = self._dispatch(queue)
            self.view.update(self.snapshot())
            if self.on_result is not None:
                self.on_result(self)

    def _launch(self, queue_name: str) -> list[dict[str, Any]]:
        env = {QUEUE_ENV: queue_name, FETCH_ENV: json.dumps(self.config.fetch.to_dict())}
        config = self.config
        workers = cmlray.launch_workers(
            n=config.workers,
            cpu=config.worker_cpu,
            memory=config.worker_memory,
            script=str(WORKER_SCRIPT),
            env=env,
            name="crawler",
        )
        ready = cmlray.await_workers(workers, wait_for_completion=False, timeout_seconds=300)
        if ready["failures"]:
            cmlray.stop_workers(*workers)
            reasons = "; ".join(f"{w['name']}: {w['reason']}" for w in ready["failures"])
            raise WorkersLostError(f"workers did not start: {reasons}")
        return workers

    def run(self) -> Snapshot:
        """Crawl until the frontier is empty, the budget spent, or a stop asked for."""
        self._seed()
        queue = cmlray.Queue(f"crawler-{uuid.uuid4().hex[:8]}", max_attempts=3)
        if not self._dispatch(queue):  # nothing to fetch: no workers needed
            return self.snapshot()
        with Live(self.view, console=self.console, transient=True, refresh_per_second=4):
            workers = self._launch(queue.name)
            self.counters.crawl_started = time.monotonic()
            self._crawl(queue, workers)
        return self.snapshot()

    def _crawl(self, queue: cmlray.Queue, workers: list[dict[str, Any]]) -> None:
        """Consume results until the queue is drained; on any exception, stop the workers."""
        watchdog = Watchdog(self, [w["id"] for w in workers])
        try:
            self._consume(queue)
        except BaseException as exc:
            watchdog.cancel()
            cmlray.stop_workers(*workers)  # an aborted crawl: the queue stays open
            if isinstance(exc, KeyboardInterrupt) and self.lost:
                raise WorkersLostError(self.lost) from None
            raise
        finally:
            self.counters.crawl_ended = time.monotonic()
        watchdog.cancel()
        _end(workers)

    def snapshot(self) -> Snapshot:
        """The numbers the live view and the summary show."""
        counters = self.counters
        crawl_s = 0.0
        if counters.crawl_started is not None:
            crawl_s = (counters.crawl_ended or time.monotonic()) - counters.crawl_started
        return Snapshot(
            stored_run=counters.stored,
            stored_total=self.scheduler.stored,
            queued=self.scheduler.queued,
            out=len(self.scheduler.out),
            failed=counters.failed,
            retried=counters.retried,
            blocked=counters.blocked,
            rate=counters.rate(),
            elapsed=time.monotonic() - counters.started,
            crawl_s=crawl_s,
            slowest=[(h.name, h.mean_ms, h.fetches, h.errors) for h in self.scheduler.slowest()],
            stopping=self.stopping,
        )

    def close(self) -> None:
        self.store.close()

    def summary(self) -> Any:
        """A Rich table of the run and of the database's totals."""
        rows = self.store.db.execute(
            "SELECT coalesce(status, 0), count(*) FROM pages GROUP BY 1 ORDER BY 1"
        ).fetchall()
        counts = {name: self.store.count(name) for name in ("links", "frontier", "skipped")}
        return summary_table(self.snapshot(), rows, counts, self.config.db)


def _end(workers: list[dict[str, Any]]) -> None:
    """Wait for the workers to exit (the queue is drained); stop any that do not."""
    ids = [w["id"] for w in workers]
    settled = cmlray.await_workers(ids, wait_for_completion=True, timeout_seconds=10)
    if settled["failures"]:
        cmlray.stop_workers(*[w["id"] for w in settled["failures"]])


class Watchdog:
    """Interrupts the session's loop if every worker ended while URLs were out.

    ``Queue.as_completed`` waits for results without a way to give control
    back; a crawl whose workers all crashed would wait forever. This thread
    watches the workers and, if none is left and some failed, interrupts the
    main thread (the loop turns that into :class:`WorkersLostError`).
    """

    def __init__(self, crawler: Crawler, worker_ids: list[str], period_s: float = 1.0) -> None:
        self.crawler = crawler
        self.ids = set(worker_ids)
        self.period_s = period_s
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="crawler-watchdog", daemon=True).start()

    def cancel(self) -> None:
        """No interrupt after this returns."""
        with self._lock:
            self._cancelled.set()

    def _watch(self) -> None:
        while not self._cancelled.wait(self.period_s):
            mine = [w for w in cmlray.list_workers() if w["id"] in self.ids]
            if all(w["status"] in FINAL for w in mine) and any(
                w["status"] != "succeeded" for w in mine
            ):
                reasons = "; ".join(f"{w['name']}: {w['reason']}" for w in mine)
                with self._lock:
                    if not self._cancelled.is_set():
                        self.crawler.lost = f"every worker ended with URLs still out ({reasons})"
                        _thread.interrupt_main()
                return
