"""The parameter queue's bookkeeping: a plain class, quick and never blocking.

Items are *leased*, never popped: a worker takes a batch of items and holds
them until it reports each one done or failed. An item goes back to the
queue when its worker dies (the session says so), when its worker's lease
passes ``lease_timeout_s`` without news from it, or when ``fn`` raised and
attempts remain; after ``max_attempts`` it is recorded failed with its error.
A result is recorded once per item, even when an item ran twice. Nothing is
ever dropped: every item ends ``done`` or ``failed``.

Items and results stay pickled bytes here; only the session and the
worker's program unpickle them.

Costs are per item and small, and never per queue: items live in flat lists
indexed by their id (no object per item), a lease belongs to a worker (one
deadline for all the items it holds, renewed by each report), and at the end
of the queue a worker gets no more than its share of what is left (down to
a twentieth of the batch it asked for), so the last items spread over every
worker instead of waiting behind one batch. A worker asks for its next batch
while it works on this one (``_exchanges.py``); once fewer items are left
than the batch it asks for, such an early ask gets nothing (unless the
worker is alone) and the worker asks again when it has run out: the last
items are shared out between workers that have run out, not on guesses
made a batch earlier (two workers on 5 ms items had ended 20-55 ms apart,
and 0-8 ms apart since: ``lease``). Deferring from every worker's next
batch on (fewer left than workers x batch) did as well with two workers
and cost 32 workers on two cores 1.7%: each deferred ask is a round trip
not hidden behind work, slow on a crowded node.

The common case runs in C: items wait as runs of ids (a ``put_many`` is one
``range``; a requeued item a run of one), a run of untouched items is leased
by slice assignments, and a batch of successes is recorded with ``map``
over the flat lists. Per item in Python, the queue's agent spent about as
long on each no-op item as the two workers that ran them together
(``benchmarks/queue_throughput.py``); anything unusual in a batch (a failure, an item
finished twice, a retry) takes the item-by-item path, which defines the rules.
Unit-tested alone (tests/unit/test_queue_state.py); the actor that serves it
is ``_queue.py``.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

PENDING, LEASED, DONE, FAILED = 0, 1, 2, 3
STATE_NAMES = ("pending", "leased", "done", "failed")
REPORT_LIMIT = 20_000  # results per page of ``QueueState.report``
ACTIVE_S = 10.0  # a worker that asked within this long shares the queue's last items
END_SHARE_DIVISOR = 20  # the last items are shared out in no less than want / this

Leased = tuple[int, int, bytes]  # (item id, attempt, payload)
Outcome = tuple[int, bool, Any, Any, Any]  # (item id, ok, result, error, traceback)


class QueueClosedError(Exception):
    """Raised inside the actor for a put after close (translated by ``_rayerrors``)."""


@dataclass
class _Lease:
    items: set[int] = field(default_factory=set)
    deadline: float = 0.0


@dataclass
class QueueState:
    """The queue's bookkeeping (see the module docstring)."""

    max_attempts: int = 3
    lease_timeout_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    closed: bool = False
    requeued: int = 0
    payloads: list[bytes] = field(default_factory=list)
    states: bytearray = field(default_factory=bytearray)
    attempts: array[int] = field(default_factory=lambda: array("I"))
    results: list[bytes | None] = field(default_factory=list)
    errors: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    pending: deque[range] = field(default_factory=deque)  # runs of ids waiting, in order
    finished: list[int] = field(default_factory=list)  # item ids, in completion order
    leases: dict[str, _Lease] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # worker -> when it last asked
    counts_by_state: list[int] = field(default_factory=lambda: [0, 0, 0, 0])

    # Items in, results out ---------------------------------------------------------------

    def put_many(self, payloads: list[bytes]) -> range:
        """Add items; returns their ids."""
        if self.closed:
            raise QueueClosedError("the queue is closed: no more items can be put")
        first = len(self.payloads)
        ids = range(first, first + len(payloads))
        self.payloads += payloads
        self.states += bytes(len(payloads))  # PENDING
        self.attempts.frombytes(bytes(self.attempts.itemsize * len(payloads)))
        self.results += [None] * len(payloads)
        if ids:
            self.pending.append(ids)
        self.counts_by_state[PENDING] += len(payloads)
        return ids

    def close(self) -> None:
        self.closed = True

    def state_of(self, item_id: int) -> str:
        return STATE_NAMES[self.states[item_id]]

    def counts(self) -> dict[str, int]:
        counts = dict(zip(STATE_NAMES, self.counts_by_state, strict=True))
        return counts | {"requeued": self.requeued, "total": len(self.payloads)}

    @property
    def settled(self) -> bool:
        """Every item put so far is done or failed."""
        return len(self.finished) == len(self.payloads)

    @property
    def drained(self) -> bool:
        """Closed and settled: workers can stop asking."""
        return self.closed and self.settled

    @property
    def servers(self) -> set[str]:
        """Every worker that has asked for items."""
        return set(self.seen)

    # Leases ------------------------------------------------------------------------------

    def lease(self, worker: str, want: int) -> list[Leased]:
        """Up to ``want`` pending items for ``worker`` (its share, at the end of the queue)."""
        now = self.clock()
        self.seen[worker] = now
        self.expire()
        waiting = self.counts_by_state[PENDING]
        if not waiting:
            return []
        active = sum(1 for when in self.seen.values() if now - when < ACTIVE_S) or 1
        lease = self.leases.setdefault(worker, _Lease())
        if lease.items and active > 1 and waiting < want:
            return []  # asked ahead, near the end: it asks again when it runs out
        # its share of what is left, but no less than a twentieth of its batch:
        # a batch is about 0.2 s of work (``_exchanges.py``), and splitting the
        # last 10 ms of it gains less than the round trips it costs
        want = min(want, max(-(-waiting // active), -(-want // END_SHARE_DIVISOR)))
        lease.deadline = now + self.lease_timeout_s
        leased: list[Leased] = []
        pending = self.pending
        while pending and len(leased) < want:
            run = pending.popleft()
            take = want - len(leased)
            if len(run) > take:
                pending.appendleft(run[take:])
                run = run[:take]
            leased += self._lease_run(run, lease.items)
        self.counts_by_state[PENDING] -= len(leased)
        self.counts_by_state[LEASED] += len(leased)
        return leased

    def _lease_run(self, run: range, held: set[int]) -> list[Leased]:
        """Lease the items of ``run`` still pending (some may have been cancelled)."""
        states, attempts, payloads = self.states, self.attempts, self.payloads
        first, end, size = run.start, run.stop, len(run)
        all_pending = states.count(PENDING, first, end) == size
        if all_pending and attempts[first:end].count(0) == size:  # never leased: slices, in C
            states[first:end] = bytes([LEASED]) * size
            attempts[first:end] = array("I", [1]) * size
            held.update(run)
            return list(zip(run, repeat(1), payloads[first:end], strict=False))
        leased: list[Leased] = []
        for item_id in run:
            if states[item_id] != PENDING:  # finished meanwhile by an earlier lease
                continue
            states[item_id] = LEASED
            attempts[item_id] += 1
            held.add(item_id)
            leased.append((item_id, attempts[item_id], payloads[item_id]))
        return leased

    def complete(self, worker: str, outcomes: list[Outcome]) -> None:
        """Record what ``worker`` did with its items; renews its lease on the others."""
        lease = self.leases.get(worker)
        mine = lease.items if lease is not None else set()
        if not self._complete_successes(mine, outcomes):
            self._complete_each(mine, outcomes)
        if lease is not None:
            lease.deadline = self.clock() + self.lease_timeout_s

    def _complete_successes(self, mine: set[int], outcomes: list[Outcome]) -> bool:
        """Record a batch of successes of distinct leased items in C; whether it was one."""
        if not outcomes:
            return True
        ids, oks, results, _, _ = zip(*outcomes, strict=True)
        states = self.states
        distinct = set(ids)
        if not (
            all(oks)
            and len(distinct) == len(ids)
            and min(ids) >= 0
            and max(ids) < len(states)
            and bytes(map(states.__getitem__, ids)).count(LEASED) == len(ids)
        ):
            return False
        mine.difference_update(distinct)
        deque(map(states.__setitem__, ids, repeat(DONE)), maxlen=0)
        deque(map(self.results.__setitem__, ids, results), maxlen=0)
        self.finished += ids
        self.counts_by_state[LEASED] -= len(ids)
        self.counts_by_state[DONE] += len(ids)
        return True

    def _complete_each(self, mine: set[int], outcomes: list[Outcome]) -> None:
        for item_id, ok, result, error, traceback in outcomes:
            if item_id >= len(self.states) or self.states[item_id] in (DONE, FAILED):
                continue  # a second run of an item already recorded
            mine.discard(item_id)
            if ok:
                self._finish(item_id, DONE, result)
            else:
                self._retry_or_fail(item_id, error, traceback)

    def cancel(self, item_ids: list[int]) -> list[int]:
        """Items still pending end ``failed`` with error "cancelled"; returns those ids.

        An item already leased runs on (its worker has it); its result is
        recorded as any other's.
        """
        cancelled = [i for i in item_ids if 0 <= i < len(self.states) and self.states[i] == PENDING]
        for item_id in cancelled:  # left in ``pending``: lease skips what is not PENDING
            self.errors[item_id] = ("cancelled", None)
            self._finish(item_id, FAILED, None)
        return cancelled

    def holds(self, worker: str) -> bool:
        """Whether ``worker`` holds leased items it has not reported yet."""
        lease = self.leases.get(worker)
        return lease is not None and bool(lease.items)

    def heartbeat(self, worker: str) -> None:
        lease = self.leases.get(worker)
        if lease is not None:
            lease.deadline = self.clock() + self.lease_timeout_s

    def release_worker(self, worker: str, why: str) -> int:
        """``worker`` is gone: its leased items go back (or fail when out of attempts)."""
        self.seen.pop(worker, None)
        lease = self.leases.pop(worker, None)
        lost = [i for i in (lease.items if lease else ()) if self.states[i] == LEASED]
        for item_id in lost:
            self._retry_or_fail(item_id, why, None)
        return len(lost)

    def expire(self) -> None:
        """Leases past their deadline go back to the queue (their workers hung)."""
        now = self.clock()
        for worker in [w for w, lease in self.leases.items() if lease.deadline <= now]:
            lease = self.leases.pop(worker)
            for item_id in [i for i in lease.items if self.states[i] == LEASED]:
                why = f"lease expired after {self.lease_timeout_s:g} s"
                self._retry_or_fail(item_id, why, None)

    def next_deadline(self) -> float | None:
        held = [lease.deadline for lease in self.leases.values() if lease.items]
        return min(held, default=None)

    def _retry_or_fail(self, item_id: int, error: str | None, traceback: str | None) -> None:
        self.errors[item_id] = (error, traceback)
        if self.attempts[item_id] >= self.max_attempts:
            self._finish(item_id, FAILED, None)
            return
        self._move(item_id, PENDING)
        # first in line: stragglers finish sooner
        self.pending.appendleft(range(item_id, item_id + 1))
        self.requeued += 1

    def _finish(self, item_id: int, state: int, result: bytes | None) -> None:
        self._move(item_id, state)
        self.results[item_id] = result
        self.finished.append(item_id)

    def _move(self, item_id: int, state: int) -> None:
        self.counts_by_state[self.states[item_id]] -= 1
        self.counts_by_state[state] += 1
        self.states[item_id] = state

    def report(self, start: int, limit: int = REPORT_LIMIT) -> dict[str, list[Any]]:
        """Finished items from completion index ``start`` on, as columns.

        The columns: ``id``, ``item``, ``ok``, ``result``, ``error``,
        ``traceback``, ``attempts``, one entry per item in completion order.
        Columns rather than a dict per item: a page of 20,000 results is
        pickled and unpickled in a third of the time (13 ms instead of 42 ms).
        The ``item`` column holds only failed items' (None for the others):
        the session knows its items by id (``_queueitems.py``; the Executor
        its calls), so they do not travel back.
        """
        ids = self.finished[start : start + limit]
        attempts = list(map(self.attempts.__getitem__, ids))
        if FAILED not in bytes(map(self.states.__getitem__, ids)):  # all done: in C
            none = [None] * len(ids)
            return {
                "id": ids,
                "item": none,
                "ok": [True] * len(ids),
                "result": list(map(self.results.__getitem__, ids)),
                "error": none,
                "traceback": none,
                "attempts": attempts,
            }
        failed = [self.states[i] == FAILED for i in ids]
        why = [
            self.errors.get(i, (None, None)) if f else (None, None)
            for i, f in zip(ids, failed, strict=True)
        ]
        return {
            "id": ids,
            "item": [self.payloads[i] if f else None for i, f in zip(ids, failed, strict=True)],
            "ok": [not f for f in failed],
            "result": [self.results[i] for i in ids],
            "error": [error for error, _ in why],
            "traceback": [tb for _, tb in why],
            "attempts": attempts,
        }
