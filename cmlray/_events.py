"""The session's event pump: one thread consuming every worker's event stream.

Each worker's actor streams batches of events (``WorkerActor.run``, a Ray
streaming generator). One thread runs an asyncio loop with a task per worker
that awaits the next batch, folds it into the registry and hands its lines
to the relay. Nothing polls: a batch is handled as soon as Ray delivers it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cmlray._agents import AgentStartError
from cmlray._logs import WorkerLogs
from cmlray._registry import Registry
from cmlray._relay import Relay
from cmlray._sanitize import strip_escapes

_OUTPUT = ("out", "err")
# Ray's words for a dead node ("its node has died", "node ... was marked dead"),
# read with the actor's class name (NodeAgent) taken out of the text first.
_NODE_DEATH = re.compile(r"\bnode\b[^.]{0,60}\b(died|dead|lost)\b")
_CLASS_NAME = re.compile(r"class_name: \S+")
NODE_DEATH_WAIT_S = 30.0


def describe_actor_death(exc: BaseException) -> str:
    """Why a worker's agent died, in words (node lost, out of memory, ...).

    Plain text: Ray's messages carry terminal colour codes, stripped here.
    """
    if isinstance(exc, AgentStartError):
        return f"{exc}: {_plain(exc.__cause__)}"[:600]
    cause = getattr(exc, "cause", None)  # RayTaskError: the actor's own code raised
    if isinstance(cause, BaseException) and "RayTaskError" in type(exc).__name__:
        return f"could not run its program: {type(cause).__name__}: {_plain(cause)}"[:400]
    text = _plain(exc)
    lowered = text.lower()
    if "outofmemory" in type(exc).__name__.lower() or "out of memory" in lowered:
        return "out of memory (killed by Ray's memory monitor)"
    if _NODE_DEATH.search(_CLASS_NAME.sub("", lowered)):
        return "node lost"
    return f"its node's agent died: {type(exc).__name__}: {text[:300]}"


def _plain(exc: BaseException | None) -> str:
    """An exception's text on one line, without terminal escapes."""
    return " ".join(strip_escapes(str(exc)).split()) if exc is not None else ""


def _node_alive(node_id: str) -> bool:
    import ray

    return any(n.get("NodeID") == node_id and n.get("Alive") for n in ray.nodes())


def death_reason(exc: BaseException, node_id: str | None, wait_s: float = NODE_DEATH_WAIT_S) -> str:
    """Why a worker's stream broke: its node died, or its actor did.

    Ray reports a lost node's actors as "temporarily unavailable" before the
    cluster has noticed the node is gone, so the node's liveness decides, for
    up to ``wait_s`` (the cluster's health checks take a few seconds).
    """
    reason = describe_actor_death(exc)
    if node_id is None or reason == "node lost":
        return reason
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if not _node_alive(node_id):
                return "node lost"
        except Exception:
            return reason
        if "Unavailable" not in type(exc).__name__ or time.monotonic() >= deadline:
            return reason
        time.sleep(0.5)


class EventPump:
    """Consumes workers' event streams on a background thread."""

    def __init__(
        self,
        registry: Registry,
        relay: Relay,
        on_finished: Callable[[str], None],
        logs: WorkerLogs | None = None,
    ) -> None:
        self._registry = registry
        self._relay = relay
        self._on_finished = on_finished
        self._console_broken = False
        self._logs = logs
        self._followed: dict[str, concurrent.futures.Future[None]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cmlray-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def follow(self, worker_id: str, name: str, open_stream: Callable[[], Awaitable[Any]]) -> None:
        """Consume the worker's event stream, once ``open_stream()`` gives it.

        ``open_stream`` waits for the worker's placement and returns its
        agent's ``run`` generator, or None when the worker ended before that.
        """
        future = asyncio.run_coroutine_threadsafe(
            self._follow(worker_id, name, open_stream), self._loop
        )
        self._followed[worker_id] = future
        # A callback, not a `finally` in _follow: a follow cancelled before the loop
        # ran it never runs at all, and its worker's resources would stay reserved.
        future.add_done_callback(lambda _done: self._ended(worker_id))

    def _ended(self, worker_id: str) -> None:
        self._followed.pop(worker_id, None)
        self._registry.finish(worker_id, "failed", "the worker's event stream ended early")
        if self._logs is not None:
            self._logs.close(worker_id)
        self._on_finished(worker_id)

    def cancel(self, worker_id: str) -> None:
        """Stop waiting for a worker that ended before it was placed."""
        future = self._followed.get(worker_id)
        if future is not None:
            future.cancel()

    async def _follow(
        self, worker_id: str, name: str, open_stream: Callable[[], Awaitable[Any]]
    ) -> None:
        try:
            stream = await open_stream()
            if stream is not None:
                async for ref in stream:
                    self._handle(worker_id, name, await ref)
        except Exception as exc:  # a Ray error: the agent or its node is gone
            node_id = self._registry.get(worker_id).node_id
            reason = await asyncio.to_thread(death_reason, exc, node_id)
            self._registry.finish(worker_id, "failed", reason)

    def _handle(self, worker_id: str, name: str, batch: list[tuple[str, Any]]) -> None:
        self._registry.apply(worker_id, batch)
        for kind, payload in batch:
            if kind in _OUTPUT:
                self._show(name, kind, payload)
                if self._logs is not None:
                    self._logs.write(worker_id, name, payload, kind)

    def _show(self, name: str, stream: str, lines: list[str]) -> None:
        """Print lines; a broken console (closed pipe) must not fail the worker."""
        if self._console_broken:
            return
        try:
            self._relay.lines(name, stream, lines)
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            self._console_broken = True
            print(f"cmlray: cannot show workers' output any more: {exc}", file=sys.stderr)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loop; streams still open are abandoned (their actors are killed apart)."""
        if self._loop.is_closed():
            return
        stopped = asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop)
        with contextlib.suppress(Exception):
            stopped.result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
