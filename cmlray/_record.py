"""One worker's record: everything the session knows of it, and how its events change it.

The registry (``_registry.py``) holds the records and changes them only
under its lock, through :func:`apply_event`; ``describe`` turns a record into
the dict CML code reads.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
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
    # What describe() computed once and keeps until it changes: at a thousand
    # workers, list_workers() must not format every timestamp again.
    _iso: dict[float, str] = field(default_factory=dict, repr=False)
    _usage_seen: tuple[Any, ...] = field(default=(), repr=False)
    _usage_fields: dict[str, float | None] = field(default_factory=dict, repr=False)

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
            "created_at": self._iso_of(self.created_at),
            "running_at": self._iso_of(self.running_at),
            "finished_at": self._iso_of(self.finished_at),
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

    def _iso_of(self, timestamp: float | None) -> str | None:
        if timestamp is None:
            return None
        text = self._iso.get(timestamp)
        if text is None:
            text = self._iso[timestamp] = iso_utc(timestamp) or ""
        return text

    def usage_fields(self) -> dict[str, float | None]:
        """Memory (GiB) in use and at peak, CPU (cores) in use, CPU seconds; None unknown.

        While the worker runs ``cpu_used`` is the cores its tree used over the
        guard's last sample interval; once it ended, the average over its run.
        ``memory_used`` stays the last figure sampled while it ran.
        """
        usage = self.usage
        if usage is None:
            return dict.fromkeys(("memory_used", "memory_peak", "cpu_used", "cpu_seconds"))
        seen = (id(usage), self.final)
        if seen == self._usage_seen:
            return dict(self._usage_fields)
        self._usage_seen, self._usage_fields = seen, self._usage_of(usage)
        return dict(self._usage_fields)

    def _usage_of(self, usage: dict[str, Any]) -> dict[str, float | None]:
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


def _placed(record: WorkerRecord, event: dict[str, Any]) -> None:
    if record.final:
        return
    record.status = "starting"
    record.reason = None  # why it waited: it waits no more
    record.ip_address = event["ip"]
    record.node_id = event["node_id"]
    record.app_port = event["app_port"]


def _started(record: WorkerRecord, event: dict[str, Any]) -> None:
    if record.final:
        return
    record.status = "running"
    record.pid = event["pid"]
    record.running_at = event["time"]
    record._iso_of(record.running_at)  # formatted once, now, not at every listing


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
    record._iso_of(record.finished_at)


def _placed_again(record: WorkerRecord, reason: str) -> None:
    """Its node went before its program started: it waits for a slot again."""
    if record.final or record.status == "running":
        return
    record.status = "scheduling"
    record.reason = reason
    record.ip_address, record.node_id, record.app_port = "unknown", None, None


def _waiting(record: WorkerRecord, reason: str) -> None:
    """Why a worker still waits for its resources (``_waiting.py``)."""
    if record.status == "scheduling":
        record.reason = reason


_APPLY: dict[str, Callable[[WorkerRecord, Any], None]] = {
    "waiting": _waiting,
    "placed_again": _placed_again,
    "placed": _placed,
    "started": _started,
    "out": _lines,
    "err": _lines,
    "usage": _usage,
    "exited": _exited,
}


def apply_event(record: WorkerRecord, kind: str, payload: Any) -> None:
    """Fold one event into ``record`` (under the registry's lock)."""
    _APPLY[kind](record, payload)
