"""One parameter queue, served to the session and to workers on an event loop.

:class:`QueueServer` wraps a :class:`~cmlray._queuestate.QueueState` (the
leasing rules) in async methods, so that workers waiting for items block in
it (a long poll) instead of polling, and the session's ``join`` waits the
same way. The agent on the session's node hosts the session's queues
(``_queuehost.py``) and runs them on its event loop. Finished items are
*published* as they finish (``publish``: the host sends them to the session
through its event stream, ``_queueresults.py``), so nobody polls for results.

Each page costs CPU on both sides whatever it holds (a Ray object on a
stream through Ray, about a millisecond and a half on each side; less on the
home agent's socket, ``_eventsocket.py``): while items still wait in the
queue, pages go out at most every ``PUBLISH_EVERY_S`` (a worker reports each
batch, some 0.2 s of work, ``_exchanges.py``: two workers on 5 ms items made
about 12 pages a second, which took about 1% of the cores from them;
``docs/architecture.md``). Nothing waits where it matters: the first page
after a quiet spell, a page once nothing is pending (the session may be
about to feed the queue, or waits for its last results) and the drained page
go out at once, and so does a page of ``PAGE_FULL_RESULTS``: quick items
finishing thousands at a time would otherwise come home in one page at the
end, which the session decodes after the work instead of during it (20,000
no-op items: one page of 11-16 ms to decode after ``join``; in pages of
2,000, 2 ms).
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from collections.abc import Callable
from typing import Any

from cmlray._queuestate import (
    PENDING,
    REPORT_LIMIT,
    Leased,
    Outcome,
    QueueClosedError,
    QueueState,
)

# (start, page of ``QueueState.report``, drained): finished items on their way to the session
Publish = Callable[[int, dict[str, list[Any]], bool], None]

# A Ray call's argument under 100 KiB travels inside the call, up to 10 MiB a call;
# a larger one goes through the object store (measured: 5.9 ms of CPU for a call with
# one argument of 140 KB, 2.7 ms with two of 70 KB).
INLINE_CHUNK_BYTES = 64 << 10
INLINE_TOTAL_BYTES = 8 << 20

PUBLISH_EVERY_S = 0.25  # pages of results at most this often while items are pending
PAGE_FULL_RESULTS = 2_000  # ... unless this many wait: then a page goes at once


def join_payloads(payloads: list[bytes]) -> list[bytes]:
    """Pickled items as chunks that each travel inside a Ray call (``split_payloads`` undoes it).

    The list pickled whole (in C: 2 ms for 20,000 items), cut every ``INLINE_CHUNK_BYTES``.
    """
    joined = pickle.dumps(payloads, pickle.HIGHEST_PROTOCOL)
    return [joined[i : i + INLINE_CHUNK_BYTES] for i in range(0, len(joined), INLINE_CHUNK_BYTES)]


def split_payloads(chunks: tuple[bytes, ...]) -> list[bytes]:
    """The items that ``join_payloads`` made ``chunks`` of."""
    payloads: list[bytes] = pickle.loads(b"".join(chunks))
    return payloads


__all__ = ["QueueClosedError", "QueueServer", "join_payloads", "split_payloads"]


class QueueServer:
    """Serves a :class:`QueueState` to the session and to workers (on the host agent's loop)."""

    def __init__(
        self,
        max_attempts: int,
        lease_timeout_s: float,
        publish: Publish | None = None,
        publish_every_s: float = PUBLISH_EVERY_S,
        page_full_results: int = PAGE_FULL_RESULTS,
    ) -> None:
        """A queue's server.

        Args:
            publish: called with every finished item, in completion order
                (without the items that succeeded: the session has them).
            publish_every_s: the shortest time between two pages while
                items are pending (see the module docstring).
            page_full_results: a page goes at once when this many finished
                items wait for one.
        """
        self.state = QueueState(max_attempts=max_attempts, lease_timeout_s=lease_timeout_s)
        self._changed = asyncio.Condition()
        self._releases = 0  # workers the session reported ended
        self._publish_to = publish
        self._published = 0  # finished items published so far
        self._published_drained = False
        self._publish_every_s = publish_every_s
        self._page_full_results = page_full_results
        self._last_page_s = -math.inf  # (monotonic) when the last page went out
        self._publish_timer: asyncio.TimerHandle | None = None
        self.attachments: dict[str, bytes] = {}

    async def _notify(self) -> None:
        self._publish()
        async with self._changed:
            self._changed.notify_all()

    def _publish(self) -> None:
        """Publish what finished since the last page: now, or once ``publish_every_s`` allows."""
        if self._publish_to is None or not self._unpublished():
            return
        now = time.monotonic()
        due = self._last_page_s + self._publish_every_s
        waiting = len(self.state.finished) - self._published
        full = waiting >= self._page_full_results
        if now >= due or full or not self.state.counts_by_state[PENDING]:
            self._publish_now(now)  # (none pending: drained, or the session may feed it)
        elif self._publish_timer is None:
            self._publish_timer = asyncio.get_running_loop().call_later(due - now, self._on_due)

    def _on_due(self) -> None:
        self._publish_timer = None
        if self._unpublished():
            self._publish_now(time.monotonic())

    def _unpublished(self) -> bool:
        state = self.state
        finished = len(state.finished) > self._published
        return finished or (state.drained and not self._published_drained)

    def _publish_now(self, now: float) -> None:
        """Pages of the items finished since the last one (and being drained, once)."""
        publish, state = self._publish_to, self.state
        if publish is None:
            return
        self._last_page_s = now
        while self._unpublished():
            start = self._published
            page = state.report(start, REPORT_LIMIT)
            self._published += len(page["id"])
            drained = state.drained and self._published == len(state.finished)
            self._published_drained = drained
            publish(start, page, drained)

    async def _wait_for(self, ready: Callable[[], bool], wait_s: float) -> bool:
        """Wait until ``ready()`` or ``wait_s`` passes, expiring leases as they fall due."""
        end = time.monotonic() + wait_s
        async with self._changed:
            while not ready():
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                deadline = self.state.next_deadline()
                if deadline is not None:
                    remaining = min(remaining, max(0.0, deadline - time.monotonic()) + 0.01)
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    self.state.expire()
                    self._publish()
            return True

    async def put_many(self, payloads: list[bytes]) -> tuple[int, int]:
        """Add items; returns the range of their ids (first, end)."""
        ids = self.state.put_many(payloads)
        await self._notify()
        return ids.start, ids.stop

    async def put_joined(self, *chunks: bytes) -> tuple[int, int]:
        """``put_many`` for items sent as ``join_payloads`` chunks."""
        return await self.put_many(split_payloads(chunks))

    async def cancel(self, item_ids: list[int]) -> list[int]:
        """Cancel items still pending (``QueueState.cancel``); returns those cancelled."""
        cancelled = self.state.cancel(item_ids)
        if cancelled:
            await self._notify()
        return cancelled

    async def close(self) -> None:
        self.state.close()
        await self._notify()

    async def exchange(
        self, worker: str, outcomes: list[Outcome], want: int, wait_s: float
    ) -> tuple[list[Leased], bool]:
        """A worker's round trip: report outcomes, lease up to ``want`` items.

        Blocks up to ``wait_s`` while there is nothing to lease and the queue
        is not drained. Returns (items, drained).
        """
        self.state.complete(worker, outcomes)
        if outcomes:
            await self._notify()
        if want <= 0:
            return [], self.state.drained
        leased: list[Leased] = []

        def ready() -> bool:
            leased.extend(self.state.lease(worker, want))
            # A worker still holding items is asking ahead: it waits for nothing.
            return bool(leased) or self.state.drained or self.state.holds(worker)

        await self._wait_for(ready, wait_s)
        self._publish()  # leasing expires overdue leases: their items may have failed
        return leased, self.state.drained

    async def exchange_pickled(
        self, worker: str, outcomes: bytes, want: int, wait_s: float
    ) -> bytes:
        """``exchange`` for a worker's program, outcomes and answer pickled.

        The program's node agent passes both through without opening them:
        a batch of thousands of items is pickled once each way, not twice.
        """
        answer = await self.exchange(worker, pickle.loads(outcomes), want, wait_s)
        return pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)

    async def attach(self, key: str, data: bytes) -> None:
        """Keep ``data`` for the queue's workers under ``key`` (an Executor's function)."""
        self.attachments[key] = data

    async def attachment(self, key: str) -> bytes:
        """What was attached under ``key``."""
        if key not in self.attachments:
            raise LookupError(f"nothing attached to this queue as {key!r}")
        return self.attachments[key]

    async def heartbeat(self, worker: str) -> None:
        self.state.heartbeat(worker)

    async def release_workers(self, ended: list[tuple[str, str]]) -> int:
        """Workers are gone (``(worker, why)`` each): their leased items go back."""
        released = sum(self.state.release_worker(worker, why) for worker, why in ended)
        self._releases += 1
        await self._notify()  # also wakes join(), which checks that a worker serves it
        return released

    async def stats(self) -> dict[str, int]:
        self.state.expire()
        self._publish()
        return self.state.counts()

    async def wait_settled(self, wait_s: float) -> bool:
        """Wait until settled (True); False after ``wait_s`` or when a worker ended."""
        releases = self._releases
        await self._wait_for(lambda: self.state.settled or self._releases != releases, wait_s)
        return self.state.settled

    async def results_since(self, start: int, wait_s: float) -> tuple[dict[str, list[Any]], bool]:
        """Results from completion index ``start``, waiting up to ``wait_s`` for one.

        Returns (a page of ``QueueState.report``, as published, drained).
        """
        await self._wait_for(lambda: len(self.state.finished) > start or self.state.drained, wait_s)
        return self.state.report(start), self.state.drained
