"""The home agent's event socket (``cmlray/_eventsocket.py``), both ends, without Ray."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmlray import _eventsocket
from cmlray._channel import encode
from cmlray._outbox import Event
from tests.support.threadloop import thread_loop


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop on a thread of its own, as the session's pump runs it."""
    with thread_loop() as loop:
        yield loop


@pytest.fixture
def listener(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> Iterator[_eventsocket.EventListener]:
    """The session's end, in a directory of the test's; closed after it (again is harmless)."""
    listener = _eventsocket.EventListener(loop, str(tmp_path))
    yield listener
    _on(loop, _close_soon(listener))


def _on(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)


async def _agent(address: _eventsocket.Address, batches: list[list[Event]]) -> bool:
    """An agent's end: connect, send each batch, close; whether every send went."""
    connection = await _eventsocket.connect(address)
    assert connection is not None
    _, writer = connection
    sent = [await _eventsocket.send(writer, batch) for batch in batches]
    writer.close()
    await writer.wait_closed()
    return all(sent)


def test_batches_arrive_in_order_and_the_stream_ends(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    got: list[list[Event]] = []
    address, ended = listener.expect(got.append)
    batches = [[("w1", "out", [f"line {i}"]), ("w2", "usage", {"rss": i})] for i in range(50)]
    batches.append([("w1", "exited", {"exit_code": 0, "blob": b"x" * (3 << 20)})])  # > 1 read
    assert _on(loop, _agent(address, batches))
    _on(loop, asyncio.wait_for(asyncio.shield(ended), 10))  # done once the agent closed
    assert got == batches
    assert not os.path.exists(os.path.dirname(address[0]))  # gone once the agent was in


def test_a_stranger_is_dropped_and_the_agent_still_connects(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    got: list[list[Event]] = []
    address, ended = listener.expect(got.append)
    path, token = address
    wrong = "0" * len(token) if token != "0" * len(token) else "1" * len(token)

    async def stranger() -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(wrong.encode() + encode([("w9", "started", {})]))
        data = await asyncio.wait_for(reader.read(), 10)  # the session closes it
        writer.close()
        return data

    assert _on(loop, stranger()) == b""
    assert not ended.done() and got == []
    assert _on(loop, _agent(address, [[("w1", "started", {})]]))
    _on(loop, asyncio.wait_for(asyncio.shield(ended), 10))
    assert got == [[("w1", "started", {})]]
    # Once the agent is in, nobody else comes that way: the socket is gone.
    with pytest.raises(OSError):
        _on(loop, stranger())


def test_the_socket_is_private_and_removed_with_the_listener(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    address, ended = listener.expect(lambda batch: None)
    directory = os.path.dirname(address[0])
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(address[0]).st_mode)
    _on(loop, _close_soon(listener))
    assert not os.path.exists(directory)
    assert ended.done()  # an agent that never came is not waited for
    assert _on(loop, _eventsocket.connect(address)) is None  # then Ray carries its events


async def _close_soon(listener: _eventsocket.EventListener) -> None:
    listener.close()


def test_a_closed_session_makes_send_fail_for_the_ray_fallback(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    got: list[list[Event]] = []
    address, _ = listener.expect(got.append)

    async def agent_after_close() -> list[bool]:
        connection = await _eventsocket.connect(address)
        assert connection is not None
        _, writer = connection
        first = await _eventsocket.send(writer, [("w1", "out", ["before"])])
        while not got:  # the session took the first batch
            await asyncio.sleep(0.01)
        listener.close()
        results = [first]
        for _ in range(200):  # the broken pipe shows on a write after the peer closed
            results.append(await _eventsocket.send(writer, [("w1", "out", ["x" * 65536])]))
            if not results[-1]:
                break
        return results

    results = _on(loop, agent_after_close())
    assert results[0] is True and results[-1] is False
    assert got == [[("w1", "out", ["before"])]]


def test_forget_ends_the_wait_for_an_agent_that_never_connected(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    address, ended = listener.expect(lambda batch: None)
    loop.call_soon_threadsafe(listener.forget, address)
    _on(loop, asyncio.wait_for(asyncio.shield(ended), 10))
    assert not os.path.exists(os.path.dirname(address[0]))  # nobody may come that way
    assert _on(loop, _eventsocket.connect(address)) is None


def test_each_agent_has_a_way_in_of_its_own(
    loop: asyncio.AbstractEventLoop, listener: _eventsocket.EventListener
) -> None:
    first: list[list[Event]] = []
    second: list[list[Event]] = []
    address_1, ended_1 = listener.expect(first.append)
    address_2, ended_2 = listener.expect(second.append)
    assert address_1[0] != address_2[0] and address_1[1] != address_2[1]
    swapped = (address_1[0], address_2[1])  # one's token at the other's door
    assert _on(loop, _agent_refused(swapped))
    assert _on(loop, _agent(address_2, [[("w2", "started", {})]]))
    assert _on(loop, _agent(address_1, [[("w1", "started", {})]]))
    for ended in (ended_1, ended_2):
        _on(loop, asyncio.wait_for(asyncio.shield(ended), 10))
    assert first == [[("w1", "started", {})]] and second == [[("w2", "started", {})]]


async def _agent_refused(address: _eventsocket.Address) -> bool:
    """Whether the session closed a connection that sent ``address``'s token."""
    reader, writer = await asyncio.open_unix_connection(address[0])
    writer.write(address[1].encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data == b""
