"""The session's workers and their newest state.

The event pump applies each batch of workers' events here; ``list_workers``
reads snapshots; ``await_workers``, ``stop_workers`` and ``watch`` wait on
the registry (no polling), so they return as soon as the state they wait
for is reached.

Every record changes under the registry's one lock, and only here. Costs
stay per worker, never per session: a waiter watching a thousand workers is
told about each worker's changes alone (``_Waiter``), live workers and names
are indexed, so an event never scans all workers.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from typing import Any

from cmlray._record import WorkerRecord, apply_event

Decided = Callable[[WorkerRecord], bool]


class _Waiter:
    """One wait on some workers: the ones not decided yet, and a wake-up."""

    def __init__(self, remaining: set[str], decided: Decided) -> None:
        self.remaining = remaining
        self.decided = decided
        self.event = threading.Event()


class Registry:
    """Thread-safe store of this session's workers, in launch order."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # predicates of wait_for may read records
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, WorkerRecord] = {}
        self._live: dict[str, None] = {}  # not final yet, in launch order
        self._names: dict[str, list[str]] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._ended: deque[tuple[str, str]] = deque(maxlen=32)  # (reason, "name status: reason")

    def add(self, records: Iterable[WorkerRecord]) -> None:
        with self._lock:
            for record in records:
                self._records[record.id] = record
                self._live[record.id] = None
                self._names.setdefault(record.name, []).append(record.id)
            self._changed.notify_all()

    def __contains__(self, worker_id: object) -> bool:
        with self._lock:
            return worker_id in self._records

    def get(self, worker_id: str) -> WorkerRecord:
        with self._lock:
            return self._records[worker_id]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def live_ids(self) -> list[str]:
        """The workers that have not ended, in launch order."""
        with self._lock:
            return list(self._live)

    def named(self, name: str) -> list[str]:
        """The ids of the workers called ``name``."""
        with self._lock:
            return list(self._names.get(name, ()))

    def describe(self, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            chosen = self._records if ids is None else ids
            return [self._records[i].describe() for i in chosen]

    def apply(self, worker_id: str, events: Iterable[tuple[str, Any]]) -> None:
        """Fold a batch of one worker's events into its record."""
        self.apply_batch((worker_id, kind, payload) for kind, payload in events)

    def apply_batch(self, events: Iterable[tuple[str, str, Any]]) -> None:
        """Fold a batch of ``(worker id, kind, payload)`` events into the records."""
        with self._lock:
            touched: dict[str, WorkerRecord] = {}
            for worker_id, kind, payload in events:
                record = self._records.get(worker_id)
                if record is None:
                    continue
                apply_event(record, kind, payload)
                touched[worker_id] = record
            for worker_id, record in touched.items():
                self._changed_one(worker_id, record)
            self._changed.notify_all()

    def _changed_one(self, worker_id: str, record: WorkerRecord) -> None:
        if record.final and worker_id in self._live:
            del self._live[worker_id]
            self._ended.append(
                (record.reason or "", f"{record.name} {record.status}: {record.reason}")
            )
        for waiter in self._waiters.get(worker_id, ()):
            if worker_id in waiter.remaining and waiter.decided(record):
                waiter.remaining.discard(worker_id)
                if not waiter.remaining:
                    waiter.event.set()

    def finish(
        self, worker_id: str, status: str, reason: str, exit_code: int | None = None
    ) -> None:
        """Give a worker a final status, unless it already has one."""
        self.finish_many([worker_id], status, reason, exit_code)

    def finish_many(
        self, worker_ids: Iterable[str], status: str, reason: str, exit_code: int | None = None
    ) -> None:
        """Give workers a final status, those that have none yet."""
        event = {"status": status, "reason": reason, "exit_code": exit_code}
        self.apply_batch((worker_id, "exited", event) for worker_id in worker_ids)

    def wait_until(self, ids: Collection[str], decided: Decided, timeout_s: float | None) -> bool:
        """Block until ``decided(record)`` holds for every worker of ``ids``, or time out.

        ``decided`` is called under the registry's lock, on a worker only when
        it changes: a wait on many workers costs nothing per other event.
        """
        with self._lock:
            remaining = {i for i in ids if not decided(self._records[i])}
            if not remaining:
                return True
            waiter = _Waiter(remaining, decided)
            for worker_id in remaining:
                self._waiters.setdefault(worker_id, []).append(waiter)
        try:
            return waiter.event.wait(timeout_s)
        finally:
            with self._lock:
                for worker_id in ids:
                    waiters = self._waiters.get(worker_id)
                    if waiters is not None and waiter in waiters:
                        waiters.remove(waiter)
                        if not waiters:
                            del self._waiters[worker_id]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        """Block until ``predicate()`` (called under the lock at each change) holds, or time out.

        For conditions about the session as a whole (new workers included);
        waits on given workers use :meth:`wait_until`.
        """
        with self._lock:
            return self._changed.wait_for(predicate, timeout_s)

    def status(self, worker_id: str) -> str:
        return self._records[worker_id].status

    def last_reasons(self, count: int = 3) -> list[str]:
        """The newest distinct reasons ended workers gave: ``name status: reason``."""
        reasons: dict[str, str] = {}
        with self._lock:
            for reason, text in reversed(self._ended):
                if reason not in reasons and len(reasons) < count:
                    reasons[reason] = text
        return list(reasons.values())
