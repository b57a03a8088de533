"""The parameter queue, session side: put items, close, join, read results.

CML's documentation tells users to build a queue themselves so that workers
"pull parameters off the queue, apply a function, and keep doing this until
the queue is empty"; cmlray ships it::

    q = cmlray.Queue("params")
    q.put_many([{"alpha": a} for a in (0.1, 1, 10)])
    q.close()                                   # no more items: workers end when it drains
    cmlray.launch_workers(2, cpu=1, memory=1, code=(
        "import cmlray.worker\\n"
        "cmlray.worker.serve('params', lambda p: train(**p))"))
    q.join()
    for r in q.results(): print(r.item, r.result, r.error)

Items and results may be anything cloudpickle handles. See ``_queuestate.py`` for
the leasing rules that make sure no item is ever lost.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple

from cmlray import _homecalls, _lifecycle, _pickling, _rayerrors
from cmlray._checks import check_count, check_positive, check_text
from cmlray._queue import INLINE_TOTAL_BYTES, join_payloads
from cmlray._queueitems import HomeItems
from cmlray._queuestate import REPORT_LIMIT
from cmlray.errors import QueueError

_POLL_WAIT_S = 5.0
_PUSH_WAIT_S = 5.0  # how long results() waits for pushed results before it pulls them


class QueueResult(NamedTuple):
    """One item's outcome (a named tuple: 20,000 are built in a few milliseconds).

    Attributes:
        item: the item as put.
        ok: True when ``fn`` returned; False when it failed ``max_attempts`` times.
        result: what ``fn`` returned (None when failed).
        error: the last error in words (None when ok).
        traceback: the last error's traceback text, when ``fn`` raised.
        attempts: how many times the item was handed to a worker.
    """

    item: Any
    ok: bool
    result: Any
    error: str | None
    traceback: str | None
    attempts: int


_new_result = functools.partial(tuple.__new__, QueueResult)  # QueueResult._make, without a call


def _decode(page: dict[str, list[Any]], home: HomeItems) -> list[QueueResult]:
    """A page of results (columns, see ``QueueState.report``) as QueueResults.

    The items come from ``home`` (the page carries none). Built with the
    collector paused: 20,000 results make 60,000 objects, and the
    collections they would set off cost more than the building (measured:
    40 ms instead of 16).
    """
    loads = _pickling.loads
    enabled = gc.isenabled()
    gc.disable()
    try:
        pickled = page["result"]
        results = (
            map(loads, pickled)  # (in C: a failed item's result is None)
            if None not in pickled
            else [None if result is None else loads(result) for result in pickled]
        )
        columns = (home.take(page["id"]), page["ok"], results, page["error"],
                   page["traceback"], page["attempts"])  # fmt: skip
        return list(map(_new_result, zip(*columns, strict=True)))
    finally:
        if enabled:
            gc.enable()


def _unpicklable(index: int, exc: Exception) -> TypeError:
    return TypeError(f"item {index} cannot be pickled ({type(exc).__name__}: {exc})")


class Queue:
    """A named queue of items that this session's workers serve.

    Args:
        name: how workers find it (``cmlray.worker.serve(name, fn)``).
        max_attempts: how often an item is tried before it is recorded failed
            (a worker dying while holding it counts as an attempt).
        lease_timeout_s: an item a worker has held this long without news
            goes back to the queue (a hung worker loses it).
    """

    def __init__(
        self,
        name: str,
        *,
        max_attempts: int = 3,
        lease_timeout_s: float = 300.0,
        _keep_items: bool = True,
    ) -> None:
        check_text("name", name)
        self.name = name
        self.max_attempts = check_count("max_attempts", max_attempts, 1)
        self.lease_timeout_s = check_positive("lease_timeout_s", lease_timeout_s, "seconds")
        session = self._session = _lifecycle.require()
        # the agent hosting the queue, and its results as that agent pushes them,
        # without the items that succeeded: they are kept here (the Executor
        # knows its calls by id and keeps nothing here)
        self._host, self._pages = session.create_queue(
            name, self.max_attempts, self.lease_timeout_s
        )
        self._home = HomeItems() if _keep_items else None
        self._put_count = 0
        self._settled_at = -1  # the put count when join last saw every item settled
        self._decoding = threading.Lock()
        self._decoded: list[QueueResult] = []
        self._undecodable = False  # a pushed result does not unpickle here: results() says why

    def _submit(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the queue, in the agent that hosts it (``_queuehost.py``).

        Its answer: a Future (the call went on the agent's socket,
        ``_homecalls.py``) or Ray's ObjectRef.
        """
        if self._session.closed:  # (a call now would start a new Ray of its own)
            raise QueueError(f"queue {self.name!r}: its session has been shut down")
        return self._session.queues.call(self.name, method, *args)

    def _answer(self, method: str, answer: Any) -> Any:
        """The answer of a call (an ObjectRef, or its future), Ray's errors mapped."""
        try:
            return _homecalls.result(answer)
        except Exception as exc:
            raise _rayerrors.queue_error(exc, self.name, method) from exc

    def _call(self, method: str, *args: Any) -> Any:
        return self._answer(method, self._submit(method, *args))

    def put(self, item: Any) -> None:
        """Add one item."""
        self.put_many([item])

    def put_many(self, items: Iterable[Any]) -> range:
        """Add items, in order; returns their ids (the queue numbers items from 0).

        Raises TypeError (nothing added) if one cannot be pickled.
        """
        items = list(items)
        plain = _pickling.all_plain(items)
        offset = self._put_count
        payloads = _pickling.dumps_many(items, lambda i, e: _unpicklable(offset + i, e), plain)
        home = self._home
        if home is None:
            return self._put_pickled(payloads)
        with home.lock:  # the items are here before any result of theirs can be
            first = home.add(items, payloads, plain)
            try:
                return self._put_pickled(payloads)
            except BaseException:
                home.remove_from(first)
                raise

    def _put_pickled(self, payloads: list[bytes]) -> range:
        """Add items already pickled (``_pickling.dumps_many``); their ids."""
        if not payloads:
            return range(self._put_count, self._put_count)
        if sum(map(len, payloads)) <= INLINE_TOTAL_BYTES:  # inside the call, not via the store
            start, stop = self._call("put_joined", *join_payloads(payloads))
        else:
            start, stop = self._call("put_many", payloads)
        self._put_count += len(payloads)
        return range(start, stop)

    def cancel(self, ids: Iterable[int]) -> list[int]:
        """Withdraw items not handed to a worker yet; returns the ids withdrawn.

        A withdrawn item ends ``failed`` with error ``"cancelled"``; an item a
        worker already holds runs on.
        """
        return list(self._call("cancel", list(ids)))

    def close(self) -> None:
        """No more items: workers end once every item is done or failed."""
        self._call("close")

    def stats(self) -> dict[str, int]:
        """Counts: ``pending``, ``leased``, ``done``, ``failed``, ``requeued``, ``total``."""
        return dict(self._call("stats"))

    def join(
        self,
        timeout: float | None = None,
        *,
        progress: bool = False,
        expect_more_workers: bool = False,
    ) -> None:
        """Wait until every item put so far is done or failed.

        Args:
            timeout: seconds; None waits without limit.
            progress: show a live Rich progress bar meanwhile.
            expect_more_workers: keep waiting even when no live worker of the
                session could serve the queue (you will launch more).

        Raises:
            TimeoutError: items were still pending or in flight at the deadline.
            QueueError: items are left and every worker that could serve the
                queue has ended (unless ``expect_more_workers``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        display = _progress_display(self) if progress else None
        put_count = self._put_count
        try:
            while not self._wait_settled(_wait_slice(deadline, 0.5 if display else _POLL_WAIT_S)):
                if display is not None:
                    display.update(self.stats())
                if not expect_more_workers:
                    self._check_served()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"queue {self.name!r}: {self.stats()} after {timeout} s")
        finally:
            if display is not None:
                display.finish(self.stats())
        self._settled_at = put_count

    def _wait_settled(self, wait_s: float) -> bool:
        """The queue's ``wait_settled``, decoding the results pushed meanwhile.

        The session waits anyway: decoding each page as it comes leaves
        ``results()`` after ``join()`` little to do (measured: 20,000 results
        take about 14 ms to decode, which a join-then-results added at the end).
        """
        answer = self._submit("wait_settled", wait_s)
        future: Future[Any] = answer if isinstance(answer, Future) else answer.future()
        pages = self._pages
        future.add_done_callback(lambda _: pages.notify())

        def news(seen: int) -> Callable[[], bool]:
            return lambda: pages.count > seen or future.done()

        while not future.done():
            pages.wait_until(news(pages.count), wait_s + _POLL_WAIT_S)
            if not self._undecodable:
                try:
                    self._decoded_since(len(self._decoded))
                except Exception:  # (results() decodes it again, and raises there)
                    self._undecodable = True
        return bool(self._answer("wait_settled", future))

    def _check_served(self) -> None:
        """Raise QueueError when items are left and no live worker can serve them."""
        session = self._session
        if session.could_serve(self.name):
            return
        stats = self.stats()
        if stats["pending"] + stats["leased"] == 0:
            return
        ended = session.registry.last_reasons()
        why = f" (the last to end: {'; '.join(ended)})" if ended else ""
        raise QueueError(
            f"queue {self.name!r}: {stats['pending']} items pending and {stats['leased']} in"
            f" flight, but no live worker of this session serves it{why}; launch workers that"
            " serve it, or pass expect_more_workers=True to wait for ones you will launch"
        )

    def results(self) -> list[QueueResult]:
        """Every finished item's outcome so far, in completion order."""
        if self._pages.count < self._put_count:  # (else every item's result is here)
            # after a join that saw every item settled, all are finished; else ask
            finished = self._put_count
            if self._settled_at != self._put_count:
                counts = self._call("stats")
                finished = counts["done"] + counts["failed"]
            if not self._pages.wait_for(finished, _PUSH_WAIT_S):
                self._pull()  # the pushed results lag: read them from the queue itself
        return list(self._decoded_since(0)[0])

    def _pull(self) -> None:
        """Read the results not pushed yet from the queue's host (``results`` falls back on it)."""
        while True:
            start = self._pages.count
            page, drained = self._call("results_since", start, 0.0)
            self._pages.receive(start, page, drained)
            if len(page["id"]) < REPORT_LIMIT:
                return

    def _drop(self) -> None:
        """Let the queue and its results go, here and in its host (the Executor's, drained)."""
        if not self._session.closed:
            self._session.drop_queue(self.name)

    def _decoded_since(self, start: int) -> tuple[list[QueueResult], bool]:
        """Results from completion index ``start`` (decoded once), and whether that is all."""
        with self._decoding:
            page, drained = self._pages.since(len(self._decoded))
            assert self._home is not None  # (the Executor reads its pages itself)
            self._decoded += _decode(page, self._home)
            return self._decoded[start:], drained

    def as_completed(
        self, timeout: float | None = None, *, expect_more_workers: bool = False
    ) -> Iterator[QueueResult]:
        """Outcomes as items finish, until the queue is closed and drained.

        Raises QueueError, as ``join`` does, when items are left that no live
        worker can serve (unless ``expect_more_workers``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            self._pages.wait_beyond(seen, _wait_slice(deadline, _POLL_WAIT_S))
            batch, drained = self._decoded_since(seen)
            seen += len(batch)
            yield from batch
            if drained:  # that was all: done, however long the caller took over it
                return
            if not batch and not expect_more_workers:
                self._check_served()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queue {self.name!r}: not drained after {timeout} s")

    __iter__ = as_completed

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


def _wait_slice(deadline: float | None, longest_s: float) -> float:
    if deadline is None:
        return longest_s
    return max(0.0, min(longest_s, deadline - time.monotonic()))


def _progress_display(queue: Queue) -> Any:
    from cmlray._queue_progress import QueueProgress

    return QueueProgress(queue.name, queue._session.relay.console)
