"""The session's queues, hosted by the node agent on the session's own node.

A queue used to be a Ray actor of its own: a Ray worker process per queue,
and every round trip of a worker's program a Ray call from its agent to
that actor. The agent on the session's node is already there (it starts
with the session and is never retired) and already answers the programs of
that node's workers on its event loop, so it hosts the queues: a program on
the session's node reaches its queue with no Ray call at all, one on
another node through its agent's one call to this agent (``_services.py``),
and the session through this agent's ``queue_call`` (``queue.py``). A
worker node that dies cannot take a queue's state with it.

:class:`QueueHost` is plain: the agent (``_nodeagent.py``) holds one and
exposes its methods as its own.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from cmlray._queue import QueueServer
from cmlray._queueresults import RESULTS

Send = Callable[[str, str, Any, int], None]  # the agent's ``Outbox.put``

# What the session and the agents may call on a queue: ``QueueServer``'s public methods
CALLS = frozenset(name for name in vars(QueueServer) if not name.startswith("_"))


class QueueHost:
    """The session's queues by name, served on the hosting agent's event loop."""

    def __init__(self, send: Send) -> None:
        self._queues: dict[str, QueueServer] = {}
        self._dropped: set[str] = set()
        self._send = send

    def open(self, name: str, max_attempts: int, lease_timeout_s: float) -> None:
        """Serve a new queue (the session checks that its name is new).

        Its finished items go to the session as they finish, on the agent's
        event stream (results without the items that succeeded: the session has them).
        """
        if name in self._queues or name in self._dropped:
            raise LookupError(f"this session already has a queue named {name!r}")

        def publish(start: int, page: dict[str, list[Any]], drained: bool) -> None:
            size = sum(map(len, filter(None, page["result"]))) + sum(
                map(len, filter(None, page["item"]))
            )
            self._send(f"queue:{name}", RESULTS, (name, start, page, drained), size)

        self._queues[name] = QueueServer(max_attempts, lease_timeout_s, publish)

    def drop(self, name: str) -> None:
        """Forget a drained queue and everything it kept (the Executor's, once its calls are in).

        A worker that asks it for items afterwards (one started late) is told
        it is drained, as it would have been.
        """
        if self._queues.pop(name, None) is not None:
            self._dropped.add(name)

    async def call(self, name: str, method: str, *args: Any) -> Any:
        """``method(*args)`` of queue ``name`` (one of ``CALLS``)."""
        queue = self._queues.get(name)
        if queue is None and name in self._dropped and method == "exchange_pickled":
            return pickle.dumps(([], True), pickle.HIGHEST_PROTOCOL)  # (no items, drained)
        if queue is None:
            raise LookupError(f"no queue named {name!r} in this session")
        if method not in CALLS:
            raise LookupError(f"a queue has no method {method!r}")
        return await getattr(queue, method)(*args)

    async def release_workers(self, ended: list[tuple[str, str]]) -> None:
        """Workers ended (``(worker, why)`` each): every queue takes back what they held."""
        for queue in list(self._queues.values()):
            await queue.release_workers(ended)

    def servers(self) -> dict[str, list[str]]:
        """Each queue's workers that have asked it for items."""
        return {name: sorted(queue.state.servers) for name, queue in self._queues.items()}
