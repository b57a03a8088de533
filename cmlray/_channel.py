"""The local channel between a worker's program and its node agent.

A worker's program does not join Ray (that would cost it seconds and about
100 MB): what it needs from the session (queue items, its function payload,
its result) goes through a socket its node agent created and the guard
passed down, named by ``CMLRAY_CHANNEL_FD``. Messages are length-prefixed pickles;
the program sends a request tuple ``(op, *args)`` and reads one reply
``("ok", value)`` or ``("error", message)``.

The program reads and writes the socket's fd itself (``send``, ``receive``):
the ``socket`` module would add 3-7 ms to every program's start
(``python -X importtime``) for nothing a blocking stream needs.

Standard library only: the guard imports ``CHANNEL_ENV`` (see ``_standalone.py``).
"""

from __future__ import annotations

import os
import pickle
import struct

# A worker's program imports this module (through ``cmlray.worker``), and the
# ``typing`` module alone took 4.5-6 ms of its start (``python -X importtime``):
# the modules a program imports take their annotations' names only for type
# checkers, which read any ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator
    from typing import Any

CHANNEL_ENV = "CMLRAY_CHANNEL_FD"
STREAM_READ_BYTES = 1 << 20  # the most ``stream_frames`` reads at once
_HEADER = struct.Struct("!I")


class ChannelClosedError(EOFError):
    """The other end of the channel is gone."""


def send(fd: int, message: Any) -> None:
    """Send one message (a picklable object) on the channel's fd."""
    data = memoryview(encode(message))
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ChannelClosedError("the channel was closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    """Read one message from the channel's fd; raises ChannelClosedError at end of stream."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def encode(message: Any) -> bytes:
    """One message as it goes on the wire: a length header, then the pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


class FrameReader:
    """Cuts a byte stream into messages, for a reader fed chunk by chunk (the agent's loop)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages ``data`` completed, in order."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]
        return messages


async def stream_frames(reader: asyncio.StreamReader) -> AsyncIterator[Any]:
    """Every message on an asyncio stream, until it ends or breaks (the home agent's socket)."""
    frames = FrameReader()
    while True:
        try:
            chunk = await reader.read(STREAM_READ_BYTES)
        except ConnectionError:
            return
        if not chunk:
            return
        for frame in frames.feed(chunk):
            yield frame
