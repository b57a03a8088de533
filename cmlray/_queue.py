"""The parameter queue's actor: serves its state to the session and to workers.

:class:`QueueActor` wraps a :class:`~cmlray._queuestate.QueueState` (the
leasing rules) in an async Ray actor, so that workers waiting for items
block in the actor (a long poll) instead of polling, and the session's
``join`` waits the same way. It lives on the session's node (``_queuebook.py``).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable
from typing import Any

from cmlray._queuestate import Leased, Outcome, QueueClosedError, QueueState

QUEUE_PREFIX = "cmlray-queue:"  # a queue's actor name: the prefix, then the queue's name

__all__ = ["QUEUE_PREFIX", "QueueActor", "QueueClosedError"]


class QueueActor:
    """Serves a :class:`QueueState` to the session and to workers (async Ray actor)."""

    def __init__(self, max_attempts: int, lease_timeout_s: float) -> None:
        self.state = QueueState(max_attempts=max_attempts, lease_timeout_s=lease_timeout_s)
        self._changed = asyncio.Condition()
        self._releases = 0  # workers the session reported ended

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

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
            return True

    async def put_many(self, payloads: list[bytes]) -> tuple[int, int]:
        """Add items; returns the range of their ids (first, end)."""
        ids = self.state.put_many(payloads)
        await self._notify()
        return ids.start, ids.stop

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

    async def heartbeat(self, worker: str) -> None:
        self.state.heartbeat(worker)

    async def release_workers(self, ended: list[tuple[str, str]]) -> int:
        """Workers are gone (``(worker, why)`` each): their leased items go back."""
        released = sum(self.state.release_worker(worker, why) for worker, why in ended)
        self._releases += 1
        await self._notify()  # also wakes join(), which checks that a worker serves it
        return released

    async def servers(self) -> list[str]:
        """Every worker that has asked this queue for items."""
        return sorted(self.state.servers)

    async def stats(self) -> dict[str, int]:
        self.state.expire()
        return self.state.counts()

    async def wait_settled(self, wait_s: float) -> bool:
        """Wait until settled (True); False after ``wait_s`` or when a worker ended."""
        releases = self._releases
        await self._wait_for(lambda: self.state.settled or self._releases != releases, wait_s)
        return self.state.settled

    async def results_since(self, start: int, wait_s: float) -> tuple[dict[str, list[Any]], bool]:
        """Results from completion index ``start``, waiting up to ``wait_s`` for one.

        Returns (a page of ``QueueState.report``, drained).
        """
        await self._wait_for(lambda: len(self.state.finished) > start or self.state.drained, wait_s)
        return self.state.report(start), self.state.drained
