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
channel (``_exchanges.py``): it never joins Ray, so it starts in
milliseconds. Items are leased in batches sized to about 0.2 s of work, the
next batch asked for while this one is worked, and results go back with
the next request, so fast items move at tens of thousands a second while
slow items are spread one at a time.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from cmlray import _exchanges, _pickling
from cmlray._exchanges import Client, Exchanges, Leased, failure

TYPE_CHECKING = False  # (a worker's program imports this module: see _channel.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Task", "send_bytes", "send_file", "serve", "tasks"]


def client() -> Client:
    """The channel to this worker's node agent (opened on first use)."""
    return _exchanges.client()


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
        self._outcome = (self.id, True, _dump(result), None, None)

    def fail(self, error: BaseException) -> None:
        """Record a failure: the item is retried until its attempts run out."""
        self._outcome = failure(self.id, error)

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


_dumper: _pickling.Dumper | None = None


def _dump(result: Any) -> bytes:
    """A result pickled (the standard library for plain values, else cloudpickle)."""
    global _dumper
    if type(result) in _pickling.PLAIN:
        return _pickling.dumps_plain(result)
    if _dumper is None:
        _dumper = _pickling.Dumper()
    return _dumper(result)


def tasks(name: str) -> Iterator[Task]:
    """Lease the queue's items as tasks until the queue is closed and drained."""
    exchanges = Exchanges(name)
    try:
        for leased in exchanges.batches():
            started = time.monotonic()
            for item_id, attempt, item, error in _unpickled(leased):
                if error is not None:  # (as serve: that item fails, the loop goes on)
                    exchanges.outcomes.append(failure(item_id, error))
                    continue
                task = Task(item, attempt, item_id)
                yield task
                exchanges.outcomes.append(task.outcome())
            exchanges.observe(len(leased), time.monotonic() - started)
    finally:
        exchanges.close()


def serve(name: str, fn: Callable[[Any], Any]) -> int:
    """Call ``fn(item)`` for each item of queue ``name`` until it is closed and drained.

    ``fn``'s return value is the item's result; an exception is recorded (with
    its traceback) and the item retried up to the queue's ``max_attempts``.

    Returns:
        How many items this worker processed.
    """
    count = 0
    exchanges = Exchanges(name)
    try:
        for leased in exchanges.batches():
            started = time.monotonic()
            count += _work(leased, fn, exchanges.outcomes)
            exchanges.observe(len(leased), time.monotonic() - started)
    finally:
        exchanges.close()
    return count


def _work(leased: list[Leased], fn: Callable[[Any], Any], outcomes: list[tuple[Any, ...]]) -> int:
    """Call ``fn`` on a batch's items, their outcomes appended to ``outcomes``; how many succeeded.

    Between two items only ``fn``'s call runs: the batch's items are
    unpickled before the first and its plain results pickled after the last,
    each in a loop of its own. The code that runs between items after a few
    milliseconds of the user's finds the CPU's caches cold: measured in a
    worker on 5 ms items, 25-66 µs between items with both done item by item,
    5-9 µs so. Only results that nothing can change wait (a plain value, or a
    tuple of them: an Executor's envelope of a plain return value); any other
    is pickled at once, as the code that returned it may change it later. An
    exception that ends the program leaves with the outcomes so far kept.
    """
    done: list[tuple[Any, ...]] = []  # (id, plain result) or an outcome
    count = 0
    plain, all_plain = _pickling.PLAIN_TYPES, _pickling.all_plain
    try:
        for item_id, _attempt, item, error in _unpickled(leased):
            if error is not None:
                done.append(failure(item_id, error))
                continue
            try:
                result = fn(item)
            except Exception as exc:
                done.append(failure(item_id, exc))
                continue
            count += 1
            kind = type(result)
            if kind in plain or (kind is tuple and all_plain(result)):
                done.append((item_id, result))
            else:
                done.append((item_id, True, _dump(result), None, None))
    finally:
        dumps, protocol = pickle.dumps, _pickling.PROTOCOL
        outcomes.extend(
            (o[0], True, dumps(o[1], protocol), None, None) if len(o) == 2 else o for o in done
        )
    return count


def _unpickled(leased: list[Leased]) -> list[tuple[int, int, Any, Exception | None]]:
    """A batch's items unpickled: (id, attempt, item, None), or (id, attempt, None, why it
    would not load)."""
    loads = _pickling.loads
    items: list[tuple[int, int, Any, Exception | None]] = []
    for item_id, attempt, payload in leased:
        try:
            items.append((item_id, attempt, loads(payload), None))
        except Exception as exc:
            items.append((item_id, attempt, None, exc))
    return items


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


_home_dirs: list[str | None] = []  # asked once: the session's project dir if this is its host


def send_bytes(data: bytes | bytearray | memoryview, dest: str | os.PathLike[str]) -> str:
    """Write ``data`` to a file on the session's host; returns its path there.

    ``send_file`` for an output held in memory (a fitted model's pickle, a
    figure): on the session's own node the program writes the file in place
    itself, with no file of its own first, no copy and, after the first
    call, no round trip to its agent; from another node the bytes travel as
    ``send_file`` sends a file. Either way the file lands whole or not at all.

    Args:
        data: the file's content.
        dest: where it lands; relative paths are under the session's project dir.

    Raises:
        TypeError: ``data`` is not bytes-like.
        QueueError: outside a worker, or the file could not be sent.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"send_bytes: data must be bytes-like, not {type(data).__name__}")
    from cmlray import _files

    if not _home_dirs:
        _home_dirs.append(client().request("home_dir"))
    home_dir = _home_dirs[0]
    if home_dir is not None:
        path = _files.destination(os.fspath(dest), home_dir)
        _files.write_local(path, data, f"{os.getpid()}-{_files.next_token()}")
        return path
    return _files.send_via_temp(data, lambda source: send_file(source, dest))
