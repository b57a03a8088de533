"""The home node's event stream on a local socket, beside Ray's.

Every node agent streams its workers' events to the session in batches
(``_outbox.py``) as the items of a Ray streaming generator
(``NodeAgent.events``): each batch is an object the agent's Ray worker
reports over gRPC and the session's Ray threads receive, store and hand to
the pump's loop. On the session's own node, where a sweep's or a queue's
workers usually run, that is most of what each item costs beside its work
(``benchmarks/runtime_floor.py``, the items side).

The agent on the session's node reaches the session directly instead: the
session listens on a Unix socket in a directory of its own (mode 0700), the
agent connects, proves itself with a token the session gave it through Ray,
and writes its batches as length-prefixed pickles (``_channel.encode``),
``drain`` after each so that a session that does not keep up stops the
agent's outbox and, through its caps, the programs' pipes. The agent waits
once two full batches are unread: with 8 MiB allowed, a flood's last line
reached the console about 0.1 s after its program ended instead of 0.03 s
through Ray, and the floods ran slower; with 2 MiB, 0.014-0.029 s, and 4-6%
faster than through Ray (``benchmarks/relay_end_to_end.py``, 4 rounds each
way, alternating). The agent's Ray
stream stays open and carries nothing: it still ends with the agent and
says why (``_agentpool.py``), after the socket's last batch has been read.
An agent that cannot connect (another user's cluster, another mount
namespace) or whose socket breaks streams through Ray as the others do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable

from cmlray._channel import HEADER, encode
from cmlray._outbox import Event

SOCKET_NAME = "events.sock"
TOKEN_BYTES = 32  # hex characters of the token an agent sends first
HELLO_TIMEOUT_S = 10.0  # a connection that sends no token in this time is dropped
CONNECT_TIMEOUT_S = 5.0
WRITE_HIGH_WATER_BYTES = 2 << 20  # the agent waits (drain) past two full batches unread

Address = tuple[str, str]  # (the socket's path, the token the agent sends)
OnBatch = Callable[[list[Event]], None]


class EventListener:
    """The session's end: one listening socket, one stream per agent it expects.

    Made on any thread (the socket is bound at once, so an agent that
    connects early waits in the backlog); served and closed on ``loop``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, parent_dir: str | None = None) -> None:
        self._loop = loop
        self._dir = tempfile.mkdtemp(prefix="cmlray-events-", dir=parent_dir)
        self.path = os.path.join(self._dir, SOCKET_NAME)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.bind(self.path)
            self._socket.listen(16)
        except OSError:
            self._socket.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._expected: dict[str, tuple[OnBatch, asyncio.Future[None]]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        self._writers: set[asyncio.StreamWriter] = set()
        asyncio.run_coroutine_threadsafe(self._serve(), loop)

    async def _serve(self) -> None:
        try:
            server = await asyncio.start_unix_server(self._accept, sock=self._socket)
        except Exception:  # refused from now on: the agent's events go through Ray
            self._socket.close()
            raise
        if self._closed:  # closed while it started (the server took over the socket)
            server.close()
        else:
            self._server = server

    def expect(self, on_batch: OnBatch) -> tuple[Address, asyncio.Future[None]]:
        """A new agent's address, and a future done once its stream has ended (on the loop).

        ``on_batch`` gets each batch the agent sends. The future is done
        when the agent's socket closed (every batch it wrote has been
        handed over) or never connected and ``forget`` was called.
        """
        token = secrets.token_hex(TOKEN_BYTES // 2)
        ended: asyncio.Future[None] = self._loop.create_future()
        self._expected[token] = (on_batch, ended)
        return (self.path, token), ended

    def forget(self, address: Address) -> None:
        """The agent of ``address`` will not connect (it is gone): its future is done."""
        expected = self._expected.pop(address[1], None)
        if expected is not None and not expected[1].done():
            expected[1].set_result(None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the loop's end: the stream ends
            await self._stream(reader, writer)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            token = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HELLO_TIMEOUT_S)
            expected = self._expected.pop(token.decode("ascii", "replace"), None)
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            expected = None
        if expected is None:  # not an agent of this session
            writer.close()
            self._writers.discard(writer)
            return
        on_batch, ended = expected
        try:
            await _read_batches(reader, on_batch)
        finally:
            writer.close()
            self._writers.discard(writer)
            if not ended.done():
                ended.set_result(None)

    def close(self) -> None:
        """Stop listening, end every stream, remove the directory (on the loop; again: nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()  # (it closes the socket; if still starting, ``_serve`` does)
        for writer in list(self._writers):  # its reader sees the end of the stream
            writer.close()
        for _, ended in self._expected.values():
            if not ended.done():
                ended.set_result(None)
        self._expected.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


async def _read_batches(reader: asyncio.StreamReader, on_batch: OnBatch) -> None:
    """Hand every batch on the stream to ``on_batch`` until it ends."""
    while True:
        try:
            header = await reader.readexactly(HEADER.size)
            (size,) = HEADER.unpack(header)
            data = await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        on_batch(pickle.loads(data))


async def connect(address: Address) -> asyncio.StreamWriter | None:
    """The agent's end: connected and introduced, or None (then Ray carries the events)."""
    path, token = address
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError):
        return None
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
    writer.write(token.encode("ascii"))
    return writer


async def send(writer: asyncio.StreamWriter, batch: list[Event]) -> bool:
    """Write one batch; False once the socket is broken (the batch may be lost with it)."""
    if writer.is_closing():
        return False
    try:
        writer.write(encode(batch))
        await writer.drain()
    except (ConnectionError, OSError):
        with contextlib.suppress(Exception):
            writer.close()
        return False
    return True
