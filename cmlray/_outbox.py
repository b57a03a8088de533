"""What a node agent has yet to send the session: every worker's events, in batches.

A node agent streams the events of all its workers in one stream
(``NodeAgent.events``), not one per worker: at a thousand workers a node,
one stream carries a batch of many workers' lines at once, where streams
per worker would make a thousand objects and a thousand waiting tasks on
each side. The stream is a Ray streaming generator, or, for the agent on
the session's own node, a local socket (``_eventsocket.py``).

Within a worker, events keep their order (placed, started, its lines,
usage, exited). A batch is taken about ``window_s`` after the first event
arrives, so a program's many small writes go out together at the cost of
a few milliseconds of latency. While output flows, batches of lines and
usage reports go at most every ``busy_interval_s`` instead: each batch
costs a fraction of a millisecond of CPU on each side whatever it carries.
A hundred workers printing ten lines a second each took 54-72% of a core
(every process of the session but the workers) with a batch every 2 ms,
31-39% at this pace (``benchmarks/relay_cpu.py``, 3 runs each way); the
latency of a line at 1,000 lines a second stayed about as it was (p99 12.5 ms
before, 13.1 ms after, ``benchmarks/relay_end_to_end.py``). Any other event
(a worker placed, started or ended, a queue's results) still leaves within
``window_s``, carrying whatever output waits with it.

Back-pressure reaches each program's pipes: a worker whose output waits
here beyond ``worker_cap_bytes`` (or while everything waiting passes
``total_cap_bytes``) is paused (its agent stops reading its pipes, so the
program blocks on its writes) until a batch has taken its output. The
stream itself is bounded (Ray's ``_generator_backpressure_num_objects``, the
socket's write buffer): when the session does not keep up, ``batches`` does
not run, and the caps hold the rest back in the programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

Event = tuple[str, str, Any]  # (worker id, kind, payload)

WINDOW_S = 0.002
BUSY_INTERVAL_S = 0.01
PACED_KINDS = frozenset({"out", "err", "usage"})  # events that may wait for the busy pace
BATCH_MAX_BYTES = 1 << 20
WORKER_CAP_BYTES = 1 << 20
TOTAL_CAP_BYTES = 64 << 20


class Outbox:
    """Events waiting to go to the session, per worker, with caps that pause readers."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        busy_interval_s: float = BUSY_INTERVAL_S,
        batch_max_bytes: int = BATCH_MAX_BYTES,
        worker_cap_bytes: int = WORKER_CAP_BYTES,
        total_cap_bytes: int = TOTAL_CAP_BYTES,
    ) -> None:
        self._window_s = window_s
        self._busy_interval_s = busy_interval_s
        self._urgent = asyncio.Event()  # an event waits that is not paced (PACED_KINDS)
        self._batch_max_bytes = batch_max_bytes
        self._worker_cap_bytes = worker_cap_bytes
        self._total_cap_bytes = total_cap_bytes
        self._pending: dict[str, list[tuple[str, Any, int]]] = {}
        self._bytes: dict[str, int] = {}
        self._total_bytes = 0
        self._paused: dict[str, Callable[[], None]] = {}
        self._arrived = asyncio.Event()

    def put(self, worker_id: str, kind: str, payload: Any, size: int = 0) -> None:
        """Queue one event; ``size`` counts its output bytes (0 for control events)."""
        self._pending.setdefault(worker_id, []).append((kind, payload, size))
        if kind not in PACED_KINDS:
            self._urgent.set()
        if size:
            self._bytes[worker_id] = self._bytes.get(worker_id, 0) + size
            self._total_bytes += size
        self._arrived.set()

    def over_cap(self, worker_id: str) -> bool:
        """Whether the worker should stop producing output until a batch takes it."""
        mine = self._bytes.get(worker_id, 0)
        return mine >= self._worker_cap_bytes or self._total_bytes >= self._total_cap_bytes

    def pause(self, worker_id: str, resume: Callable[[], None]) -> None:
        """The worker stopped reading its pipes; ``resume`` is called once it may go on."""
        self._paused[worker_id] = resume

    def waiting(self) -> int:
        """How many workers have events waiting."""
        return len(self._pending)

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Batches of events, as they come, until the caller stops iterating."""
        loop = asyncio.get_running_loop()
        last_s = -math.inf
        while True:
            await self._arrived.wait()
            await self._pause(loop.time() - last_s)
            batch = self._take()
            if not self._pending:
                self._arrived.clear()
                self._urgent.clear()
            self._resume()
            if batch:
                last_s = loop.time()
                yield batch

    async def _pause(self, since_last_s: float) -> None:
        """Wait ``_delay_s``; an event that is not paced cuts it to ``window_s`` from then."""
        paced_s = self._delay_s(since_last_s) - self._window_s
        if paced_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), paced_s)
        await asyncio.sleep(self._window_s)

    def _delay_s(self, since_last_s: float) -> float:
        """How long the next batch waits: ``window_s``, or the busy pace for output alone."""
        if self._urgent.is_set() or self._total_bytes >= self._batch_max_bytes:
            return self._window_s
        return max(self._window_s, self._busy_interval_s - since_last_s)

    def _take(self) -> list[Event]:
        """Events up to about ``batch_max_bytes``, whole workers first, order kept."""
        batch: list[Event] = []
        budget = self._batch_max_bytes
        for worker_id in list(self._pending):
            events = self._pending[worker_id]
            taken = 0
            for kind, payload, size in events:
                if size and budget <= 0 and batch:
                    break
                batch.append((worker_id, kind, payload))
                budget -= size
                taken += 1
                if size:
                    self._bytes[worker_id] -= size
                    self._total_bytes -= size
            if taken == len(events):
                del self._pending[worker_id]
                self._bytes.pop(worker_id, None)
            else:
                del events[:taken]
            if budget <= 0:
                break
        return batch

    def _resume(self) -> None:
        if self._total_bytes >= self._total_cap_bytes:
            return
        for worker_id in [w for w in self._paused if not self.over_cap(w)]:
            self._paused.pop(worker_id)()
