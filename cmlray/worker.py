"""What a worker's program imports: serve a session's queue.

Inside a script or code launched by ``cmlray.launch_workers``::

    import cmlray.worker

    def train(params):
        return fit(**params)            # the return value is the item's result

    cmlray.worker.serve("params", train)  # until the queue is closed and drained

or, for a loop of your own::

    for task in cmlray.worker.tasks("params"):
        with task:                      # an exception marks the item failed (retried)
            task.result = train(task.item)

The program talks to the session through its node agent over a local
channel (``_channel.py``): it never joins Ray, so it starts in milliseconds. Items are
leased in batches sized to about 50 ms of work and results are sent back
with the next request, so fast items move at tens of thousands a second
while slow items are spread one at a time.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import cloudpickle

from cmlray import _channel
from cmlray.errors import QueueError

__all__ = ["Task", "send_file", "serve", "tasks"]

_TARGET_BATCH_S = 0.05
_MAX_BATCH = 4096
_WAIT_S = 10.0


class _Client:
    """The program's end of the channel (one per process, thread-safe)."""

    def __init__(self) -> None:
        fd = os.environ.get(_channel.CHANNEL_ENV)
        if fd is None:
            raise QueueError(
                "cmlray.worker only works inside a worker launched by cmlray.launch_workers"
                f" ({_channel.CHANNEL_ENV} is not set)"
            )
        self._sock = socket.socket(fileno=int(fd))
        self._sock.set_inheritable(False)  # children of the program must not share it
        self._lock = threading.Lock()

    def request(self, *message: Any) -> Any:
        with self._lock:
            _channel.send(self._sock, message)
            reply = _channel.receive(self._sock)
        if reply[0] == "error":
            raise QueueError(reply[1])
        return reply[1]


_client: _Client | None = None


def client() -> _Client:
    """The channel to this worker's node agent (opened on first use)."""
    global _client
    if _client is None:
        _client = _Client()
    return _client


class Task:
    """One leased item. Set ``result`` (or call ``done``) or let an exception out of ``with``."""

    def __init__(self, item: Any, attempt: int, item_id: int) -> None:
        self.item = item
        self.attempt = attempt
        self.result: Any = None
        self.id = item_id
        self._outcome: tuple[Any, ...] | None = None

    def done(self, result: Any = None) -> None:
        """Record the item's result."""
        self._outcome = (self.id, True, bytes(cloudpickle.dumps(result)), None, None)

    def fail(self, error: BaseException) -> None:
        """Record a failure: the item is retried until its attempts run out."""
        text = "".join(traceback.format_exception(error))
        self._outcome = (self.id, False, None, f"{type(error).__name__}: {error}", text)

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if error is None:
            self.done(self.result)
            return False
        if not isinstance(error, Exception):
            return False  # KeyboardInterrupt, SystemExit: let them end the program
        self.fail(error)
        return True

    def outcome(self) -> tuple[Any, ...]:
        if self._outcome is None:  # the loop body neither finished nor failed it
            self.done(self.result)
        assert self._outcome is not None
        return self._outcome


class _Batcher:
    """Sizes lease batches to about ``_TARGET_BATCH_S`` of work."""

    def __init__(self) -> None:
        self.per_item_s: float | None = None

    def want(self) -> int:
        if self.per_item_s is None:
            return 1
        return max(1, min(_MAX_BATCH, int(_TARGET_BATCH_S / max(self.per_item_s, 1e-6))))

    def observe(self, items: int, elapsed_s: float) -> None:
        if items:
            sample = elapsed_s / items
            self.per_item_s = (
                sample if self.per_item_s is None else 0.5 * (self.per_item_s + sample)
            )


def tasks(name: str) -> Iterator[Task]:
    """Lease the queue's items as tasks until the queue is closed and drained."""
    channel = client()
    batcher = _Batcher()
    outcomes: list[tuple[Any, ...]] = []
    try:
        while True:
            leased, drained = channel.request("exchange", name, outcomes, batcher.want(), _WAIT_S)
            outcomes = []
            started = time.monotonic()
            for item_id, attempt, payload in leased:
                task = Task(cloudpickle.loads(payload), attempt, item_id)
                yield task
                outcomes.append(task.outcome())
            batcher.observe(len(leased), time.monotonic() - started)
            if drained and not leased:
                return
    finally:
        if outcomes:  # the loop was left early: report what was finished
            channel.request("exchange", name, outcomes, 0, 0.0)


def serve(name: str, fn: Callable[[Any], Any]) -> int:
    """Call ``fn(item)`` for each item of queue ``name`` until it is closed and drained.

    ``fn``'s return value is the item's result; an exception is recorded (with
    its traceback) and the item retried up to the queue's ``max_attempts``.

    Returns:
        How many items this worker processed.
    """
    count = 0
    for task in tasks(name):
        with task:
            task.result = fn(task.item)
        count += 1
    return count


def send_file(path: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None) -> str:
    """Send a file this worker wrote to the session's host; returns its path there.

    On CML a worker's files are in the shared project at once; on a cluster
    a worker's node has a disk of its own, so outputs meant for the session
    travel with this call (on the session's own node it is a local copy).
    The file lands whole or not at all.

    Args:
        path: the file, absolute or relative to the worker's working dir.
        dest: where it lands; relative paths are under the session's project
            dir. Default: ``path`` itself when relative (the same place in
            the project as in the worker's copy of it), else its file name.

    Raises:
        QueueError: outside a worker, or the file could not be sent.
    """
    source = os.path.abspath(os.fspath(path))
    if dest is None:
        dest = os.fspath(path) if not os.path.isabs(path) else os.path.basename(source)
    return str(client().request("send_file", source, os.fspath(dest)))
