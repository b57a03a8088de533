"""The session's frontier: which URLs go out next, in which batch, and when.

No Ray and no I/O here (the engine does both), so the politeness rules are
easy to read and to test:

* per host at most ``per_host`` URLs are out at once, across all workers;
* per host, request starts are ``delay`` apart: each URL gets a slot
  (``not_before``, a wall-clock time) that the worker waits for;
* no more than ``max_pages`` pages, counting those already stored;
* a retry waits its backoff in a heap and goes out when due.

Each worker handles one batch at a time, so the scheduler keeps three
batches per worker outstanding (one running, two waiting), enough to hide
the session's round trip through the queue (tens of milliseconds on a busy
machine) without letting URLs wait long for their slots.

``cmlray.Queue.as_completed`` gives the session control only when a result
arrives, so the scheduler never leaves work waiting with nothing out: when
no batch is out, it sends whatever is left (retries and far slots
included), and the workers wait for the slots.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from crawler.urls import host_of

MIN_HORIZON_S = 0.5  # a URL whose slot is further ahead than this waits in the session
BATCHES_PER_WORKER = 3  # one running, two waiting: the session's round trip stays hidden


@dataclass
class Entry:
    """A URL on its way: discovered, maybe sent, maybe waiting to be retried."""

    url: str
    depth: int
    attempts: int = 0
    hops: int = 0
    ready_at: float = 0.0


@dataclass
class Host:
    """One host's queue, what it has out, its politeness clock and its timings."""

    name: str
    delay: float
    todo: deque[Entry] = field(default_factory=deque)
    out: int = 0
    next_start: float = 0.0
    fetches: int = 0
    total_ms: float = 0.0
    errors: int = 0

    def slot(self, now: float, ready_at: float) -> float:
        """The earliest start for this host's next request."""
        return max(now, ready_at, self.next_start)

    def take(self, start: float) -> None:
        self.out += 1
        self.next_start = start + self.delay

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.fetches if self.fetches else 0.0


@dataclass
class Limits:
    """The scheduler's rules (see the module docstring)."""

    workers: int
    concurrency: int
    per_host: int
    delay: float
    max_pages: int


class Scheduler:
    """The frontier in memory, and the dispatch of batches to the queue."""

    def __init__(self, limits: Limits, stored: int = 0) -> None:
        self.limits = limits
        self.stored = stored
        self.hosts: dict[str, Host] = {}
        self.out: dict[str, Entry] = {}
        self.batches_out = 0
        self._delayed: list[tuple[float, int, Entry]] = []
        self._order = itertools.count()

    @property
    def max_batches_out(self) -> int:
        return BATCHES_PER_WORKER * self.limits.workers

    def host(self, name: str, delay: float | None = None) -> Host:
        """The host's state (created with ``delay``, default the crawl's)."""
        if name not in self.hosts:
            self.hosts[name] = Host(name, self.limits.delay if delay is None else delay)
        return self.hosts[name]

    def add(self, entry: Entry) -> None:
        """A URL to fetch (the engine has checked scope, robots.txt and duplicates)."""
        self.host(host_of(entry.url)).todo.append(entry)

    def retry(self, entry: Entry, ready_at: float) -> None:
        """Fetch ``entry`` again, not before ``ready_at``."""
        entry.ready_at = ready_at
        heapq.heappush(self._delayed, (ready_at, next(self._order), entry))

    @property
    def queued(self) -> int:
        """URLs waiting in the session (not yet sent)."""
        return sum(len(h.todo) for h in self.hosts.values()) + len(self._delayed)

    def budget(self) -> int:
        """How many more URLs may be sent under ``max_pages``."""
        return self.limits.max_pages - self.stored - len(self.out) - len(self._delayed)

    def done(self, url: str, elapsed_ms: float | None, failed: bool) -> Entry:
        """A URL came back from a worker: it is no longer out."""
        entry = self.out.pop(url)
        host = self.hosts[host_of(url)]
        host.out -= 1
        if elapsed_ms is not None:
            host.fetches += 1
            host.total_ms += elapsed_ms
        host.errors += failed
        return entry

    def _promote(self, now: float, everything: bool) -> None:
        """Retries whose backoff is over (or all of them) join their host's queue, in front."""
        while self._delayed and (everything or self._delayed[0][0] <= now):
            _, _, entry = heapq.heappop(self._delayed)
            self.host(host_of(entry.url)).todo.appendleft(entry)

    def _batch_size(self) -> int:
        free = max(1, self.max_batches_out - self.batches_out)
        waiting = sum(len(h.todo) for h in self.hosts.values())
        return max(1, min(self.limits.concurrency, math.ceil(waiting / free)))

    def _fill(self, now: float, size: int, horizon: float) -> list[dict[str, Any]]:
        """Up to ``size`` tasks, host by host, within per-host limits and slots."""
        batch: list[dict[str, Any]] = []
        for host in self.hosts.values():
            while host.todo and host.out < self.limits.per_host and len(batch) < size:
                start = host.slot(now, host.todo[0].ready_at)
                if start > now + max(horizon, host.delay) or self.budget() <= 0:
                    break
                entry = host.todo.popleft()
                host.take(start)
                self.out[entry.url] = entry
                batch.append({"url": entry.url, "not_before": start, "attempt": entry.attempts})
        return batch

    def next_batches(self, now: float) -> list[list[dict[str, Any]]]:
        """The batches to put on the queue now (maybe none)."""
        self._promote(now, everything=False)
        batches = self._fill_all(now, MIN_HORIZON_S)
        if not batches and self.batches_out == 0 and self.budget() + len(self._delayed) > 0:
            self._promote(now, everything=True)  # nothing else would wake the session
            batches = self._fill_all(now, math.inf)
        return batches

    def _fill_all(self, now: float, horizon: float) -> list[list[dict[str, Any]]]:
        batches = []
        while self.batches_out < self.max_batches_out:
            batch = self._fill(now, self._batch_size(), horizon)
            if not batch:
                break
            batches.append(batch)
            self.batches_out += 1
        return batches

    def batch_done(self) -> None:
        self.batches_out -= 1

    def slowest(self, n: int = 5) -> list[Host]:
        """The ``n`` hosts with the highest mean response time."""
        return sorted((h for h in self.hosts.values() if h.fetches), key=lambda h: -h.mean_ms)[:n]
