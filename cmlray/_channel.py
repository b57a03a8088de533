"""The local channel between a worker's program and its node agent.

A worker's program does not join Ray (that would cost it seconds and about
100 MB): what it needs from the session (queue items, its function payload,
its result) goes through a socket its node agent created and the guard
passed down, named by ``CMLRAY_CHANNEL_FD``. Messages are length-prefixed pickles;
the program sends a request tuple ``(op, *args)`` and reads one reply
``("ok", value)`` or ``("error", message)``.

Standard library only: the guard imports ``CHANNEL_ENV`` (see ``_standalone.py``).
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

CHANNEL_ENV = "CMLRAY_CHANNEL_FD"
_HEADER = struct.Struct("!I")


class ChannelClosedError(EOFError):
    """The other end of the channel is gone."""


def send(sock: socket.socket, message: Any) -> None:
    """Send one message (a picklable object)."""
    sock.sendall(encode(message))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ChannelClosedError("the channel was closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> Any:
    """Read one message; raises ChannelClosedError at end of stream."""
    (size,) = _HEADER.unpack(_read_exactly(sock, _HEADER.size))
    return pickle.loads(_read_exactly(sock, size))


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
