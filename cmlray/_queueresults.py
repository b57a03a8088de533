"""A queue's results in the session, as the agent that hosts the queue pushes them.

The hosting agent (``_queuehost.py``) sends each queue's finished items to
the session as they finish, through the event stream it already has with
the session (``_outbox.py``, events of kind ``"results"``), in completion
order (in pages, at most every 0.25 s while items wait: ``_queue.py``):
``Queue.results``, ``as_completed`` and the Executor's futures read
them here, with no Ray call per result (the session used to long-poll the
queue for each). A page is the columns of ``QueueState.report``.

Pages come in order on one stream; a page is placed by its start index, so
a page read again (``Queue.results`` pulls what the stream has not brought
after a wait) is not counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

COLUMNS = ("id", "item", "ok", "result", "error", "traceback", "attempts")
RESULTS = "results"  # the event kind of a pushed page

Page = dict[str, list[Any]]


class ResultPages:
    """One queue's results so far (columns, completion order), thread-safe."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._columns: Page = {column: [] for column in COLUMNS}
        self.drained = False  # the queue was closed and every item is done or failed

    @property
    def count(self) -> int:
        return len(self._columns["id"])

    def receive(self, start: int, page: Page, drained: bool) -> None:
        """Place a page of results that starts at completion index ``start``.

        A page past the end (something before it is missing) is left for a
        pull to bring; the part of a page already here is skipped.
        """
        with self._changed:
            skip = self.count - start
            if skip < 0:
                return
            if skip < len(page["id"]):
                for column in COLUMNS:
                    self._columns[column] += page[column][skip:]
            self.drained = self.drained or drained
            self._changed.notify_all()

    def wait_beyond(self, count: int, timeout_s: float) -> bool:
        """Wait until more than ``count`` results are here, or drained; whether so."""
        return self.wait_until(lambda: self.count > count or self.drained, timeout_s)

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until at least ``count`` results are here; whether so."""
        return self.wait_until(lambda: self.count >= count, timeout_s)

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``ready()``, checked at each page and ``notify``; whether so."""
        with self._changed:
            return self._changed.wait_for(ready, timeout_s)

    def notify(self) -> None:
        """Wake the waiters to check their condition (something else they wait for happened)."""
        with self._changed:
            self._changed.notify_all()

    def since(self, start: int) -> tuple[Page, bool]:
        """The results from completion index ``start`` on, and whether that is all there will be."""
        with self._changed:
            page = {column: values[start:] for column, values in self._columns.items()}
            return page, self.drained
