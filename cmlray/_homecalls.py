"""The session's calls on its queues, on the home agent's event socket instead of Ray.

The session's queues live in the node agent of its own node
(``_queuehost.py``). Each call on one (``put``, ``close``, ``stats``,
``wait_settled``...) was a Ray actor call: 1.04 ms in an idle session,
measured here, and 4-5 ms for a put of 2,000 items while the session
launches its workers. That agent already holds a Unix socket to the
session for its events (``_eventsocket.py``); the session now writes its
calls on it and the agent its replies, between its event batches:

- session -> agent: ``("call", id, queue name, method, args)``; the queue
  name None for the agent's own calls (``NodeAgent.SESSION_CALLS``: start
  and stop workers, open and drop queues...)
- agent -> session: ``("reply", id, ok, value or exception)``

each a frame of the programs' channel (``_channel.encode``). The agent
starts each call as a task in the order they arrive, as Ray starts an async
actor's calls. For an agent that is a Ray actor, until it has connected,
or once its socket broke (the calls on their way then fail, naming why),
calls go through Ray as before. A thread of the session waits for each
call's reply before its next call (the Executor's sender finishes its puts
before ``close``), so switching ways never reorders a caller's calls.

An agent that is a process of the session (``_homeagent.py``) has no other
way in: from ``hold`` on, calls made before it connects wait, in order, and
are written as it comes in; once its socket is gone every call fails with
why it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from cmlray._channel import encode, stream_frames

CALL = "call"
REPLY = "reply"


class HomeCalls:
    """The session's side: calls written on the agent's socket, their replies matched by id.

    ``attach``, ``replied`` and ``detach`` run on the session's event loop;
    ``call`` on any thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._only_way = False  # the agent is a process of the session: no Ray to fall back on
        self._held: list[bytes] | None = None  # calls waiting for it to come in, in order
        self._gone = "the session's node agent has not started"

    def hold(self) -> None:
        """A home agent that is a process of the session starts: calls wait for it from now."""
        with self._lock:
            self._only_way = True
            if self._held is None:
                self._held = []

    def through_ray(self) -> None:
        """The home agent is a Ray actor: calls go through Ray until it connects.

        (Calls held meanwhile go on the socket when it connects, or fail at ``detach``.)
        """
        with self._lock:
            self._only_way = False

    def attach(self, writer: asyncio.StreamWriter) -> None:
        """The home agent is in: calls go on its socket from now on (on the loop)."""
        with self._lock:
            self._writer = writer
            held, self._held = self._held, None
        if held:  # (on the loop, before any call written since: the order holds)
            writer.write(b"".join(held))

    def call(self, name: str | None, method: str, args: tuple[Any, ...]) -> Future[Any] | None:
        """Send ``method(*args)`` on queue ``name`` (None: the agent's own); its reply's future.

        None when the agent is a Ray actor not connected (the caller goes
        through Ray); for a process of the session, a future that waits for
        it to connect, or has failed if it is gone.
        """
        if self._writer is None and not self._only_way:
            return None
        call_id = next(self._ids)  # (atomic: ids stay unique across threads)
        data = encode((CALL, call_id, name, method, args))
        future: Future[Any] = Future()
        with self._lock:
            writer = self._writer
            if writer is None or writer.is_closing():
                if self._held is not None:
                    self._pending[call_id] = future
                    self._held.append(data)
                    return future
                if not self._only_way:
                    return None
                future.set_exception(ConnectionError(self._gone))
                return future
            self._pending[call_id] = future
        try:
            self._loop.call_soon_threadsafe(writer.write, data)
        except RuntimeError:  # the loop is closed: the session is ending
            with self._lock:
                self._pending.pop(call_id, None)
            if not self._only_way:
                return None
            future.set_exception(ConnectionError("the session is ending"))
        return future

    def replied(self, frame: tuple[Any, ...]) -> None:
        """A reply came: its call's future is done."""
        _, call_id, ok, value = frame
        with self._lock:
            future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def detach(self, why: str) -> None:
        """The socket is gone (or the agent never came): calls on their way fail with ``why``.

        Later calls go through Ray, or fail with ``why`` when the agent was a
        process of the session, until the next agent comes in.
        """
        with self._lock:
            self._writer = None
            self._held = None
            self._gone = why
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(why))


def result(answer: Any) -> Any:
    """What a call on the home agent returned, waited for: its Future's, or Ray's ObjectRef's."""
    import ray

    return answer.result() if isinstance(answer, Future) else ray.get(answer)


Call = Callable[..., Awaitable[Any]]  # (queue name or None, method, *args) -> its value


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, call: Call) -> None:
    """The agent's side: answer the session's calls on the socket until it closes."""
    tasks: set[asyncio.Task[None]] = set()
    async for frame in stream_frames(reader):
        if type(frame) is tuple and len(frame) == 5 and frame[0] == CALL:
            task = asyncio.create_task(_answer(writer, call, *frame[1:]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _answer(
    writer: asyncio.StreamWriter,
    call: Call,
    call_id: int,
    name: str | None,
    method: str,
    args: tuple[Any, ...],
) -> None:
    try:
        reply = (REPLY, call_id, True, await call(name, method, *args))
    except Exception as exc:
        reply = (REPLY, call_id, False, exc)
    try:
        data = encode(reply)
    except Exception as exc:  # a value or an exception that does not pickle: say what it was
        error = RuntimeError(f"{type(exc).__name__}: the reply of {method} could not be sent")
        data = encode((REPLY, call_id, False, error))
    if not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write(data)
