"""The session's event pump: one thread, one asyncio loop, every node agent's events.

Each node agent streams its workers' events in batches (``_outbox.py``);
the pump's loop consumes every agent's stream (``_agentpool.py``), and also
runs the reservations (``_reservations.py``): everything that reacts to Ray
happens on this one thread, so those parts need no locks. A batch is folded
into the registry (one lock for the whole batch), its lines go to the relay
and the log store, the workers that ended are handed to ``on_ended``, and
the pages of queue results from the agent hosting the queues to
``on_results``. Nothing polls: a batch is handled as soon as Ray delivers it.

Lines are shown in the context their worker was launched in: in Jupyter that
context names the cell, so each worker's output lands under the cell that
launched it even though one batch carries many workers' lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from cmlray._logs import WorkerLogs
from cmlray._outbox import Event
from cmlray._queueresults import RESULTS
from cmlray._registry import Registry
from cmlray._relay import Relay

T = TypeVar("T")
_OUTPUT = ("out", "err")


class EventPump:
    """The loop thread, and what it does with each batch of events."""

    def __init__(
        self,
        registry: Registry,
        relay: Relay,
        logs: WorkerLogs,
        on_ended: Callable[[list[str]], None],
        on_results: Callable[[Any], None] = lambda payload: None,
    ) -> None:
        self._registry = registry
        self._on_results = on_results  # a page of a queue's results (``_queueresults.py``)
        self._relay = relay
        self._logs = logs
        self._on_ended = on_ended
        self._console_broken = False
        self._names: dict[str, str] = {}
        self._contexts: dict[str, contextvars.Context] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cmlray-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, soon (from any thread)."""
        self.loop.call_soon_threadsafe(callback, *args)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def follow(self, worker_id: str, name: str, context: contextvars.Context) -> None:
        """Show this worker's lines under ``name``, in ``context`` (its launch's)."""
        self._names[worker_id] = name
        self._contexts[worker_id] = context

    def handle(self, batch: list[Event]) -> None:
        """Fold one batch of an agent's events in (on the loop).

        Lines are shown before the registry changes, so a worker's output is
        on the console by the time ``await_workers`` sees it ended.
        """
        ended: list[str] = []
        lines: dict[str, list[tuple[str, list[str]]]] = {}
        for worker_id, kind, payload in batch:
            if kind in _OUTPUT:
                lines.setdefault(worker_id, []).append((kind, payload))
            elif kind == "exited":
                ended.append(worker_id)
            elif kind == RESULTS:
                self._on_results(payload)
        for worker_id, chunks in lines.items():
            self._show(worker_id, chunks)
        self._registry.apply_batch(batch)
        if ended:
            self.ended(ended)

    def ended(self, worker_ids: Iterable[str]) -> None:
        """These workers have ended: close their logs, tell the session (on the loop)."""
        ids = list(worker_ids)
        for worker_id in ids:
            self._logs.close(worker_id)
            self._names.pop(worker_id, None)
            self._contexts.pop(worker_id, None)
        self._on_ended(ids)

    def _show(self, worker_id: str, chunks: list[tuple[str, list[str]]]) -> None:
        name = self._names.get(worker_id, worker_id)
        for stream, lines in chunks:
            self._logs.write(worker_id, name, lines, stream)
        context = self._contexts.get(worker_id)
        if self._console_broken:
            return
        try:
            for stream, lines in chunks:
                if context is None:
                    self._relay.lines(name, stream, lines)
                else:
                    context.run(self._relay.lines, name, stream, lines)
        except (OSError, ValueError) as exc:  # a closed pipe, or a write to a closed file
            self._console_broken = True
            print(f"cmlray: cannot show workers' output any more: {exc}", file=sys.stderr)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the loop; whatever still runs on it is cancelled."""
        if self.loop.is_closed():
            return
        stopped = asyncio.run_coroutine_threadsafe(self._cancel_all(), self.loop)
        with contextlib.suppress(Exception):
            stopped.result(timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
