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
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from cmlray._ids import iso_utc
from cmlray._lines import is_progress
from cmlray._sanitize import strip_escapes

TAIL_LINES = 100
GIB = float(1 << 30)
FINAL = ("succeeded", "failed", "stopped", "timedout")


@dataclass
class WorkerRecord:
    """Everything known about one worker (changed only by the registry, under its lock)."""

    id: str
    name: str
    cpu: float
    memory: float
    nvidia_gpu: int
    command: str
    status: str = "scheduling"
    created_at: float = field(default_factory=time.time)
    running_at: float | None = None
    finished_at: float | None = None
    ip_address: str = "unknown"
    node_id: str | None = None
    app_port: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    result_payload: bytes | None = None
    usage: dict[str, Any] | None = None  # the guard's last usage report
    _result: Any = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def duration_s(self) -> float | None:
        if self.running_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return round(max(0.0, end - self.running_at), 3)

    def describe(self) -> dict[str, Any]:
        """The worker as CML describes it (a fresh dict)."""
        app_url = None
        if self.app_port is not None and self.ip_address != "unknown":
            app_url = f"http://{self.ip_address}:{self.app_port}/"
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "created_at": iso_utc(self.created_at),
            "running_at": iso_utc(self.running_at),
            "finished_at": iso_utc(self.finished_at),
            "duration": self.duration_s(),
            "ip_address": self.ip_address,
            "node_id": self.node_id,
            "app_url": app_url,
            "cpu": self.cpu,
            "memory": self.memory,
            "nvidia_gpu": self.nvidia_gpu,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "tail": list(self.tail),
            "result": self.result(),
            **self.usage_fields(),
        }

    def usage_fields(self) -> dict[str, float | None]:
        """Memory (GiB) in use and at peak, CPU (cores) in use, CPU seconds; None unknown.

        While the worker runs ``cpu_used`` is the cores its tree used over the
        guard's last sample interval; once it ended, the average over its run.
        ``memory_used`` stays the last figure sampled while it ran.
        """
        usage = self.usage
        if usage is None:
            return dict.fromkeys(("memory_used", "memory_peak", "cpu_used", "cpu_seconds"))
        cores = usage.get("cores")
        duration_s = self.duration_s()
        if self.final:
            cores = usage["cpu_s"] / duration_s if duration_s else None
        return {
            "memory_used": round(usage["rss_bytes"] / GIB, 3),
            "memory_peak": round(usage["peak_rss_bytes"] / GIB, 3),
            "cpu_used": None if cores is None else round(cores, 2),
            "cpu_seconds": round(usage["cpu_s"], 2),
        }

    def result(self) -> Any:
        """What a ``fn=`` worker returned (unpickled once), else None."""
        if self.result_payload is not None and self._result is None:
            try:
                self._result = cloudpickle.loads(self.result_payload)
            except Exception as exc:  # a class the session cannot import, say
                self._result = f"<result could not be unpickled: {exc}>"
        return self._result


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
                _APPLY[kind](record, payload)
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


def _placed(record: WorkerRecord, event: dict[str, Any]) -> None:
    if record.final:
        return
    record.status = "starting"
    record.ip_address = event["ip"]
    record.node_id = event["node_id"]
    record.app_port = event["app_port"]


def _started(record: WorkerRecord, event: dict[str, Any]) -> None:
    if record.final:
        return
    record.status = "running"
    record.pid = event["pid"]
    record.running_at = event["time"]


def _lines(record: WorkerRecord, lines: list[str]) -> None:
    # A progress state is an open line's passing state, not a line the program printed.
    # Escapes stripped: a tail printed later must not move a terminal's cursor.
    finished = [line for line in lines if not is_progress(line)]
    record.tail.extend(strip_escapes(line) for line in finished[-TAIL_LINES:])


def _usage(record: WorkerRecord, usage: dict[str, Any]) -> None:
    if not record.final:
        record.usage = usage


def _exited(record: WorkerRecord, event: dict[str, Any]) -> None:
    if record.final:
        return
    if event.get("usage"):
        record.usage = {**(record.usage or {}), **event["usage"]}
    record.status = event["status"]
    record.reason = event["reason"]
    if event.get("error") and record.status == "failed":
        record.reason = f"{event['error']} ({event['reason']})"
    record.result_payload = event.get("result")
    record.exit_code = event.get("exit_code")
    record.finished_at = event.get("time") or time.time()


_APPLY: dict[str, Callable[[WorkerRecord, Any], None]] = {
    "placed": _placed,
    "started": _started,
    "out": _lines,
    "err": _lines,
    "usage": _usage,
    "exited": _exited,
}
