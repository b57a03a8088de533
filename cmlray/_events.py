"""The session's event pump: one thread consuming every worker's event stream.

Each worker's actor streams batches of events (``WorkerActor.run``, a Ray
streaming generator). One thread runs an asyncio loop with a task per worker
that awaits the next batch, folds it into the registry and hands its lines
to the relay. Nothing polls: a batch is handled as soon as Ray delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cmlray._logs import WorkerLogs
from cmlray._registry import Registry
from cmlray._relay import Relay

_OUTPUT = ("out", "err")
NODE_DEATH_WAIT_S = 30.0


def describe_actor_death(exc: BaseException) -> str:
    """Why a worker's actor died, in words (node lost, out of memory, ...)."""
    cause = getattr(exc, "cause", None)  # RayTaskError: the actor's own code raised
    if isinstance(cause, BaseException) and "RayTaskError" in type(exc).__name__:
        return f"could not run its program: {type(cause).__name__}: {cause}"[:400]
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if "outofmemory" in type(exc).__name__.lower() or "out of memory" in lowered:
        return "out of memory (killed by Ray's memory monitor)"
    if "node" in lowered and ("died" in lowered or "dead" in lowered or "lost" in lowered):
        return "node lost"
    return f"actor died: {type(exc).__name__}: {text[:300]}"


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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cmlray-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def follow(self, worker_id: str, name: str, stream: Any) -> None:
        """Start consuming ``stream``, the worker's ``run`` generator."""
        asyncio.run_coroutine_threadsafe(self._follow(worker_id, name, stream), self._loop)

    async def _follow(self, worker_id: str, name: str, stream: Any) -> None:
        try:
            async for ref in stream:
                self._handle(worker_id, name, await ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a Ray error: the actor or its node is gone
            node_id = self._registry.get(worker_id).node_id
            reason = await asyncio.to_thread(death_reason, exc, node_id)
            self._registry.finish(worker_id, "failed", reason)
        finally:
            self._registry.finish(worker_id, "failed", "the worker's event stream ended early")
            if self._logs is not None:
                self._logs.close(worker_id)
            self._on_finished(worker_id)

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
