"""The session's queues: where they live, and who serves them.

A queue is hosted by the agent on the session's own node (``_queuehost.py``):
a worker node that dies must not take the queue's state with it, and that
agent lives as long as the session. The host pushes each queue's results
to the session as they finish (the pump hands them here, into the queue's
``ResultPages``). The session tells the host when workers end (every queue
takes back the items they held, at once), and asks, for ``Queue.join``,
whether any live worker could still serve a queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Set
from typing import Any

from cmlray import _homeagent, _homecalls
from cmlray._homecalls import HomeCalls
from cmlray._queueresults import Page, ResultPages
from cmlray._rayerrors import session_error
from cmlray.errors import QueueError


class QueueBook:
    """This session's queue names, and the agent that hosts them.

    Args:
        host: the agent on the session's node: its Ray handle, or its process
            (``_homeagent.py``), whose calls all go on its socket; None: the
            session has no node of its own, and no queue can be made.
        calls: the session's calls on its socket, once it is in (``_homecalls.py``).
    """

    def __init__(self, host: Any, calls: HomeCalls) -> None:
        self._host = host
        self._calls = calls
        self._results: dict[str, ResultPages] = {}

    def _agent_call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the host agent: a Future on its socket, or a Ray ObjectRef."""
        return _homeagent.call(self._host, self._calls, method, *args)

    def create(
        self, name: str, max_attempts: int, lease_timeout_s: float
    ) -> tuple[Any, ResultPages]:
        """Start serving queue ``name`` (one per name and session).

        Returns the agent that hosts it and where its results arrive.
        """
        if name in self._results:
            raise QueueError(f"this session already has a queue named {name!r}")
        if self._host is None:
            raise QueueError("queues live on the session's own Ray node, and this session has none")
        pages = self._results[name] = ResultPages()
        try:
            _homecalls.result(self._agent_call("open_queue", name, max_attempts, lease_timeout_s))
        except Exception as exc:
            del self._results[name]
            raise session_error(exc, "starting a queue") from exc
        return self._host, pages

    def call(self, name: str, method: str, *args: Any) -> Any:
        """``method(*args)`` on queue ``name`` in its host: a Future when it goes on the
        host's socket, else Ray's ObjectRef."""
        future = self._calls.call(name, method, args)
        if future is not None:
            return future
        return self._host.queue_call.remote(name, method, *args)  # (a Ray actor's)

    def drop(self, name: str) -> None:
        """Forget queue ``name`` here and in its host (the Executor's, once drained)."""
        if self._results.pop(name, None) is not None:
            self._agent_call("drop_queue", name)

    def received(self, name: str, start: int, page: Page, drained: bool) -> None:
        """A page of queue ``name``'s results, pushed by its host (on the pump's loop)."""
        pages = self._results.get(name)
        if pages is not None:
            pages.receive(start, page, drained)

    def workers_ended(self, ended: list[tuple[str, str]]) -> None:
        """Every queue takes back the items these workers held: ``(worker id, why)`` each.

        One call for a whole batch of ended workers and every queue (it wakes
        the queues' joiners too).
        """
        if ended and self._results:
            with contextlib.suppress(Exception):  # Ray already shut down
                self._agent_call("release_queue_items", ended)

    def could_serve(self, name: str, live: Set[str]) -> bool:
        """Whether one of the ``live`` workers serves queue ``name``, or may yet.

        A live worker that has asked only other queues for items is not
        counted: it serves those.
        """
        if not live:
            return False
        servers: dict[str, list[str]] = _homecalls.result(self._agent_call("queue_servers"))
        if live & set(servers.get(name, ())):
            return True
        elsewhere = {w for other, ids in servers.items() if other != name for w in ids}
        return bool(live - elsewhere)
