"""The session's queues: their actors, and who serves them.

A queue's actor lives on the session's own node (a worker node that dies
must not take the queue's state with it) and is named, so that the agents of
the session's workers find it for their programs. The session tells every
queue when workers end (their leased items go back at once), and asks, for
``Queue.join``, whether any live worker could still serve a queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Set
from typing import Any

from cmlray._rayerrors import session_error
from cmlray.errors import QueueError


class QueueBook:
    """This session's queue actors, by actor name."""

    def __init__(self) -> None:
        self._queues: dict[str, Any] = {}

    def create(self, actor_name: str, actor_class: type, *args: Any) -> Any:
        """Start a queue's actor; one per name and session."""
        import ray

        if actor_name in self._queues:
            name = actor_name.split(":", 1)[1]
            raise QueueError(f"this session already has a queue named {name!r}")
        try:
            options = {"name": actor_name, "num_cpus": 0, **on_this_node()}
            handle = ray.remote(actor_class).options(**options).remote(*args)
        except Exception as exc:
            raise session_error(exc, "starting a queue") from exc
        self._queues[actor_name] = handle
        return handle

    def workers_ended(self, ended: list[tuple[str, str]]) -> None:
        """Every queue takes back the items these workers held: ``(worker id, why)`` each.

        One call per queue for a whole batch of ended workers (and it wakes
        the queue's joiners).
        """
        if not ended:
            return
        for queue in list(self._queues.values()):
            with contextlib.suppress(Exception):
                queue.release_workers.remote(ended)

    def could_serve(self, queue: Any, live: Set[str]) -> bool:
        """Whether one of the ``live`` workers serves ``queue``, or may yet.

        A live worker that has asked only other queues for items is not
        counted: it serves those.
        """
        import ray

        if not live:
            return False
        if live & set(ray.get(queue.servers.remote())):
            return True
        others = [h for h in self._queues.values() if h is not queue]
        elsewhere: set[str] = set()
        for servers in ray.get([h.servers.remote() for h in others]):
            elsewhere.update(servers)
        return bool(live - elsewhere)

    def close(self) -> None:
        import ray

        for handle in self._queues.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self._queues.clear()


def on_this_node() -> dict[str, Any]:
    """Actor options that pin an actor to the session's own node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # a Ray Client session has no node of its own
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}
