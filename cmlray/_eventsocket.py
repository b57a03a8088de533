"""The home node's event stream on a local socket, beside Ray's.

Every node agent streams its workers' events to the session in batches
(``_outbox.py``) as the items of a Ray streaming generator
(``NodeAgent.events``): each batch is an object the agent's Ray worker
reports over gRPC and the session's Ray threads receive, store and hand to
the pump's loop. On the session's own node, where a sweep's or a queue's
workers usually run, that is most of what each item costs beside its work
(``benchmarks/runtime_floor.py``, the items side).

The agent on the session's node reaches the session directly instead: the
session listens on a Unix socket in a directory of its own (mode 0700),
the agent connects, proves itself with a token the session gave it (through
Ray, or on the stdin of an agent that is its own process, ``_homeagent.py``;
the socket then stops listening and its directory goes: a session killed
later leaves nothing in the temp dir), and writes its batches as
length-prefixed pickles (``_channel.encode``), ``drain`` after each so
that a session that does not keep up stops the agent's outbox and, through
its caps, the programs' pipes. The agent waits once two full batches are
unread: with 8 MiB allowed, a flood's last line reached the console about
0.1 s after its program ended instead of 0.03 s through Ray, and the
floods ran slower; with 2 MiB, 0.014-0.029 s, and 4-6% faster than through
Ray (``benchmarks/relay_end_to_end.py``, 4 rounds each way, alternating).
The agent's Ray stream stays open and carries nothing: it still ends with
the agent and says why (``_agentpool.py``), after the socket's last batch
has been read (an agent that is a process of the session has no Ray
stream: its process's end tells). An agent that cannot connect (another user's cluster,
another mount namespace) or whose socket breaks streams through Ray as the
others do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from cmlray._channel import encode, stream_frames
from cmlray._homecalls import REPLY, HomeCalls
from cmlray._outbox import Event

SOCKET_NAME = "events.sock"
TOKEN_BYTES = 32  # hex characters of the token an agent sends first
HELLO_TIMEOUT_S = 10.0  # a connection that sends no token in this time is dropped
CONNECT_TIMEOUT_S = 5.0
WRITE_HIGH_WATER_BYTES = 2 << 20  # the agent waits (drain) past two full batches unread

Address = tuple[str, str]  # (the socket's path, the token the agent sends)
OnBatch = Callable[[list[Event]], None]


@dataclass(eq=False)
class _Door:
    """One expected agent's way in: a socket listening in a directory of its own."""

    directory: str
    sock: socket.socket
    token: str
    on_batch: OnBatch
    ended: asyncio.Future[None]
    server: asyncio.AbstractServer | None = None
    shut: bool = False  # the agent came, will not come, or the session ends


class EventListener:
    """The session's end: a socket per agent it expects, listening until that agent is in.

    ``expect`` binds at once (an agent that connects early waits in the
    backlog), on any thread; everything else runs on ``loop``. Once its
    agent is in (or will not come) a socket stops listening and its
    directory is removed, so a session killed later leaves nothing behind
    in the temp dir (an attached session has no reaper to sweep it).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        parent_dir: str | None = None,
        calls: HomeCalls | None = None,
    ) -> None:
        self._loop = loop
        self._parent_dir = parent_dir
        self._calls = calls  # the session's queue calls go on the agent's socket once it is in
        self._doors: dict[str, _Door] = {}  # by token
        self._writers: set[asyncio.StreamWriter] = set()

    def expect(self, on_batch: OnBatch) -> tuple[Address, asyncio.Future[None]]:
        """A new agent's address, and a future done once its stream has ended.

        ``on_batch`` gets each batch the agent sends (on the loop). The
        future is done when the agent's socket closed (every batch it wrote
        has been handed over), or it never connected and ``forget`` or
        ``close`` was called. Raises OSError when no socket can be made.
        """
        directory = tempfile.mkdtemp(prefix="cmlray-events-", dir=self._parent_dir)
        path = os.path.join(directory, SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(4)
        except OSError:
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        token = secrets.token_hex(TOKEN_BYTES // 2)
        door = _Door(directory, sock, token, on_batch, self._loop.create_future())
        self._doors[token] = door
        asyncio.run_coroutine_threadsafe(self._serve(door), self._loop)
        return (path, token), door.ended

    async def _serve(self, door: _Door) -> None:
        try:
            server = await asyncio.start_unix_server(
                functools.partial(self._accept, door), sock=door.sock
            )
        except Exception:  # refused: the agent's events go through Ray
            door.sock.close()
            raise
        door.server = server
        if door.shut:  # shut while it started (the server took over the socket)
            server.close()

    def _shut(self, door: _Door) -> None:
        """Stop listening for ``door``'s agent and remove its directory (once)."""
        if door.shut:
            return
        door.shut = True
        self._doors.pop(door.token, None)
        if door.server is not None:
            door.server.close()  # (it closes the socket; still starting: ``_serve`` does)
        shutil.rmtree(door.directory, ignore_errors=True)

    def forget(self, address: Address) -> None:
        """The agent of ``address`` will not connect (it is gone): its future is done."""
        door = self._doors.get(address[1])
        if door is not None:
            self._shut(door)
            if not door.ended.done():
                door.ended.set_result(None)

    async def _accept(
        self, door: _Door, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the loop's end: the stream ends
            await self._stream(door, reader, writer)

    async def _stream(
        self, door: _Door, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        try:
            token = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HELLO_TIMEOUT_S)
        except (asyncio.IncompleteReadError, OSError):  # (TimeoutError is an OSError)
            token = b""
        if door.shut or not hmac.compare_digest(token, door.token.encode("ascii")):
            writer.close()  # not this door's agent (or it came already)
            self._writers.discard(writer)
            return
        self._shut(door)  # in: nobody else may come this way
        calls = self._calls
        if calls is not None:
            calls.attach(writer)
        try:
            await _read_frames(reader, door.on_batch, calls)
        finally:
            if calls is not None:
                calls.detach("the socket to the session's node agent closed")
            writer.close()
            self._writers.discard(writer)
            if not door.ended.done():
                door.ended.set_result(None)

    def close(self) -> None:
        """Stop listening, end every stream, remove the directories (again: nothing more)."""
        for door in list(self._doors.values()):
            self._shut(door)
            if not door.ended.done():
                door.ended.set_result(None)
        for writer in list(self._writers):  # its reader sees the end of the stream
            writer.close()


async def _read_frames(
    reader: asyncio.StreamReader, on_batch: OnBatch, calls: HomeCalls | None
) -> None:
    """Hand every batch on the stream to ``on_batch``, every reply to ``calls``, until it ends."""
    async for frame in stream_frames(reader):
        if type(frame) is tuple and frame and frame[0] == REPLY:
            if calls is not None:
                calls.replied(frame)
        else:
            on_batch(frame)


async def connect(
    address: Address,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The agent's end: connected and introduced, or None (then Ray carries the events).

    The reader carries the session's queue calls (``_homecalls.serve``).
    """
    path, token = address
    try:
        connection = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT_S)
    except OSError:  # (TimeoutError is an OSError)
        return None
    reader, writer = connection
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
    writer.write(token.encode("ascii"))
    return reader, writer


async def send(writer: asyncio.StreamWriter, batch: list[Event]) -> bool:
    """Write one batch; False once the socket is broken (the batch may be lost with it)."""
    if writer.is_closing():
        return False
    try:
        writer.write(encode(batch))
        await writer.drain()
    except OSError:
        with contextlib.suppress(Exception):
            writer.close()
        return False
    return True
