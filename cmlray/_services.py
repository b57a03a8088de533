"""What a node agent does for a worker's program, over the program's local channel.

The program (``cmlray.worker``, ``cmlray._fnrun``) sends requests; the agent
answers them on its event loop, reaching the session's queues on the
program's behalf (hosted by the agent of the session's node, ``_queuehost.py``:
no Ray call there, one from any other node): worker programs never join Ray
(``_channel.py``).

Requests:
    ("exchange", queue, outcomes, want, wait_s) -> pickled (items, drained)
        (``outcomes`` come pickled too: the agent passes both through unopened)
    ("payload",)                                -> the cloudpickled (fn, args, kwargs)
    ("result", pickled_value)                   -> None; the worker's ``result``
    ("error", text)                             -> None; why ``fn`` failed
    ("send_file", source, dest)                 -> the path it has on the session's host
    ("home_dir",)                               -> the session's project dir when this node
                                                   is the session's host, else None
    ("attachment", queue, key)                  -> bytes attached to the queue (``_shipfn.py``)

A failed request is answered ``("error", words)``, which the program raises
as ``QueueError``; Ray's errors are put in words by ``_rayerrors.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from cmlray import _channel, _files, _rayerrors

QueueCall = Callable[..., Awaitable[Any]]  # (queue name, method, *args) -> its answer


class ProgramServices:
    """Answers one program's requests; remembers its function's result or error."""

    def __init__(
        self,
        worker_id: str,
        payload: bytes | None,
        home: Any = None,
        home_dir: str = "",
        queue_call: QueueCall | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.payload = payload
        self.home = home  # the agent on the session's node; None: this is that node
        self.home_dir = home_dir
        self.queue_call = queue_call  # reaches the session's queues (``NodeAgent``)
        self._sent = 0
        self.result: bytes | None = None
        self.error: str | None = None

    def final_fields(self) -> dict[str, Any]:
        """What the worker's final event carries besides its exit."""
        return {"result": self.result, "error": self.error}

    async def handle(self, request: tuple[Any, ...]) -> Any:
        op, *args = request
        if op == "exchange":
            return await self.exchange(*args)
        if op == "payload":
            if self.payload is None:
                raise LookupError("this worker was not launched with fn=")
            return self.payload
        if op == "result":
            self.result = args[0]
            return None
        if op == "error":
            self.error = args[0]
            return None
        if op == "send_file":
            return await asyncio.to_thread(self.send_file, *args)
        if op == "home_dir":  # (``cmlray.worker.send_bytes`` writes there itself)
            return self.home_dir if self.home is None else None
        if op == "attachment":
            return await self._queue(args[0], "attachment", args[1])
        raise LookupError(f"unknown request {op!r}")

    async def exchange(self, name: str, outcomes: bytes, want: int, wait_s: float) -> bytes:
        """A round trip with the queue; the outcomes and the answer stay pickled bytes."""
        answer = await self._queue(name, "exchange_pickled", self.worker_id, outcomes, want, wait_s)
        return bytes(answer)

    async def _queue(self, name: str, method: str, *args: Any) -> Any:
        if self.queue_call is None:
            raise LookupError("this worker's agent reaches no queue")
        return await self.queue_call(name, method, *args)

    def send_file(self, source: str, dest: str) -> str:
        """Put the program's file ``source`` at ``dest`` on the session's host."""
        if not os.path.isfile(source):
            raise LookupError(f"send_file: no file {source!r} on this worker's node")
        path = _files.destination(dest, self.home_dir)
        self._sent += 1
        token = f"{self.worker_id}-{self._sent}"
        if self.home is None:
            _files.copy_local(source, path, token)
        else:
            _files.send(self.home, source, path, token)
        return path


class ChannelServer:
    """The agent's end of one program's channel: requests in, replies out, in order.

    Read by a reader on the agent's loop; the requests of one program are
    answered one after the other (it waits for each reply), on a task that
    exists only while there is a request to answer.
    """

    def __init__(
        self, sock: socket.socket, services: ProgramServices, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._sock = sock
        self._services = services
        self._loop = loop
        self._reader = _channel.FrameReader()
        self._requests: list[tuple[Any, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self._open = False

    def start(self) -> None:
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._read)
        self._open = True

    def _read(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._requests += self._reader.feed(data)
        if self._requests and self._task is None:
            self._task = self._loop.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self._requests and self._open:
                request = self._requests.pop(0)
                try:
                    reply: tuple[Any, ...] = ("ok", await self._services.handle(request))
                except Exception as exc:  # told to the program, which raises QueueError
                    reply = ("error", _rayerrors.words_for_program(exc))
                if self._open:
                    await self._loop.sock_sendall(self._sock, _channel.encode(reply))
        except OSError:  # the program is gone
            self.close()
        finally:
            self._task = None

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._sock.fileno())
        if self._task is not None:
            self._task.cancel()
        self._sock.close()
