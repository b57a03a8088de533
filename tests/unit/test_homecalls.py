"""The session's queue calls on the home agent's event socket (``cmlray/_homecalls.py``), without Ray."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmlray import _eventsocket, _homecalls
from cmlray._homecalls import HomeCalls
from cmlray._outbox import Event
from tests.support.threadloop import thread_loop


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The session's loop, on a thread of its own, as the pump runs it."""
    with thread_loop() as loop:
        yield loop


@pytest.fixture
def agent_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The agent's loop (another thread: the agent is another process)."""
    with thread_loop() as loop:
        yield loop


def _on(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)


class _Queues:
    """What the agent answers: a queue host's ``call`` (``NodeAgent.queue_call``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, tuple[Any, ...]]] = []

    async def call(self, name: str, method: str, *args: Any) -> Any:
        self.seen.append((name, method, args))
        if method == "close":
            raise LookupError(f"no queue {name!r}")
        if method == "slow":
            await asyncio.sleep(0.05)
        return (name, method, *args)


async def _agent(
    address: _eventsocket.Address, queues: _Queues, batches: list[list[Event]]
) -> asyncio.StreamWriter:
    """An agent's end: connect, serve the session's calls, send its batches."""
    connection = await _eventsocket.connect(address)
    assert connection is not None
    reader, writer = connection
    asyncio.get_running_loop().create_task(_homecalls.serve(reader, writer, queues.call))
    for batch in batches:
        assert await _eventsocket.send(writer, batch)
    return writer


def _connected(
    loop: asyncio.AbstractEventLoop, agent_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> tuple[HomeCalls, _eventsocket.EventListener, _Queues, list[list[Event]], Any]:
    calls = HomeCalls(loop)
    listener = _eventsocket.EventListener(loop, str(tmp_path), calls)
    got: list[list[Event]] = []
    address, _ = listener.expect(got.append)
    queues = _Queues()
    assert calls.call("q", "stats", ()) is None  # not in yet: the caller goes through Ray
    writer = _on(agent_loop, _agent(address, queues, [[("w1", "out", ["hello"])]]))
    for _ in range(500):
        if calls.call("q", "stats", ()) is not None:
            break
        threading.Event().wait(0.01)
    return calls, listener, queues, got, writer


def test_calls_are_answered_in_order_between_the_event_batches(
    loop: asyncio.AbstractEventLoop, agent_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    calls, listener, queues, got, _ = _connected(loop, agent_loop, tmp_path)
    slow = calls.call("q", "slow", ())
    futures = [calls.call("q", "put_joined", (b"x" * 100_000, [i])) for i in range(20)]
    assert slow is not None and all(f is not None for f in futures)
    assert slow.result(10) == ("q", "slow")
    assert [f.result(10) for f in futures if f is not None] == [
        ("q", "put_joined", b"x" * 100_000, [i]) for i in range(20)
    ]
    methods = [method for _, method, _ in queues.seen]
    assert methods.index("slow") < methods.index("put_joined")  # started in the order sent
    assert got == [[("w1", "out", ["hello"])]]  # the batches still reach the session
    _on(loop, _close(listener))


def test_a_call_that_raises_raises_in_the_session(
    loop: asyncio.AbstractEventLoop, agent_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    calls, listener, _, _, _ = _connected(loop, agent_loop, tmp_path)
    future = calls.call("gone", "close", ())
    assert future is not None
    with pytest.raises(LookupError, match="no queue 'gone'"):
        future.result(10)
    _on(loop, _close(listener))


def test_a_broken_socket_fails_the_calls_on_their_way_and_sends_the_next_through_ray(
    loop: asyncio.AbstractEventLoop, agent_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    calls, listener, _, _, writer = _connected(loop, agent_loop, tmp_path)
    on_its_way = calls.call("q", "slow", ())
    assert on_its_way is not None
    agent_loop.call_soon_threadsafe(writer.transport.abort)  # the agent's end goes
    with pytest.raises(ConnectionError, match="closed"):
        on_its_way.result(10)
    assert calls.call("q", "stats", ()) is None
    _on(loop, _close(listener))


async def _close(listener: _eventsocket.EventListener) -> None:
    listener.close()


def test_an_agent_process_calls_wait_for_it_in_order_and_fail_once_it_is_gone(
    loop: asyncio.AbstractEventLoop, agent_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    calls = HomeCalls(loop)
    listener = _eventsocket.EventListener(loop, str(tmp_path), calls)
    address, _ = listener.expect(lambda batch: None)
    calls.hold()  # the agent is a process of the session: no Ray to go through
    early = [
        calls.call(None if i == 0 else "q", "start" if i == 0 else "put", (i,)) for i in range(5)
    ]
    assert all(f is not None and not f.done() for f in early)
    queues = _Queues()

    async def agent_calls(name: str | None, method: str, *args: Any) -> Any:
        return await queues.call(str(name), method, *args)

    async def agent() -> asyncio.StreamWriter:
        connection = await _eventsocket.connect(address)
        assert connection is not None
        reader, writer = connection
        asyncio.get_running_loop().create_task(_homecalls.serve(reader, writer, agent_calls))
        return writer

    writer = _on(agent_loop, agent())
    assert [f.result(10) for f in early if f is not None] == [
        ("None", "start", 0),
        *[("q", "put", i) for i in range(1, 5)],
    ]
    agent_loop.call_soon_threadsafe(writer.transport.abort)  # the agent's process died
    failed = None
    for _ in range(500):
        later = calls.call("q", "stats", ())
        assert later is not None  # never through Ray
        try:
            later.result(10)  # (answered while the socket's end is on its way)
        except ConnectionError as exc:
            failed = exc
            break
        threading.Event().wait(0.01)
    assert failed is not None and "closed" in str(failed)
    after = calls.call("q", "stats", ())
    assert after is not None and isinstance(after.exception(0), ConnectionError)
    _on(loop, _close(listener))
