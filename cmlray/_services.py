"""What a worker's actor does for its program, over the local channel.

The program (``cmlray.worker``, ``cmlray._fnrun``) sends requests; the actor
answers them on a thread of its own, reaching the session's queues through
Ray on the program's behalf (DESIGN 8: worker programs don't join Ray).

Requests:
    ("exchange", queue, outcomes, want, wait_s) -> (items, drained)
    ("payload",)                                -> the cloudpickled (fn, args, kwargs)
    ("result", pickled_value)                   -> None; the worker's ``result``
    ("error", text)                             -> None; why ``fn`` failed
    ("send_file", source, dest)                 -> the path it has on the session's host
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

from cmlray import _channel, _files

QUEUE_PREFIX = "cmlray-queue:"


class ProgramServices:
    """Answers one program's requests; remembers its function result."""

    def __init__(
        self, worker_id: str, payload: bytes | None, home: Any = None, home_dir: str = ""
    ) -> None:
        self.worker_id = worker_id
        self.payload = payload
        self.home = home  # the agent on the session's node; None: this is that node
        self.home_dir = home_dir
        self._sent = 0
        self.result: bytes | None = None
        self.error: str | None = None
        self._queues: dict[str, Any] = {}

    def final_fields(self) -> dict[str, Any]:
        """What the worker's final event carries besides its exit."""
        return {"result": self.result, "error": self.error}

    def handle(self, request: tuple[Any, ...]) -> Any:
        op, *args = request
        if op == "exchange":
            return self.exchange(*args)
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
            return self.send_file(*args)
        raise LookupError(f"unknown request {op!r}")

    def queue(self, name: str) -> Any:
        import ray

        if name not in self._queues:
            try:
                self._queues[name] = ray.get_actor(QUEUE_PREFIX + name)
            except ValueError:
                raise LookupError(f"no queue named {name!r} in this session") from None
        return self._queues[name]

    def exchange(self, name: str, outcomes: list[Any], want: int, wait_s: float) -> Any:
        import ray

        handle = self.queue(name)
        return ray.get(handle.exchange.remote(self.worker_id, outcomes, want, wait_s))

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


def serve_channel(sock: socket.socket, services: ProgramServices) -> threading.Thread:
    """Answer the program's requests on a daemon thread until it closes the channel."""

    def loop() -> None:
        with contextlib.closing(sock):
            while True:
                try:
                    request = _channel.receive(sock)
                except (_channel.ChannelClosedError, OSError):
                    return
                try:
                    reply: tuple[Any, ...] = ("ok", services.handle(request))
                except Exception as exc:  # told to the program, which raises QueueError
                    reply = ("error", _describe(exc))
                try:
                    _channel.send(sock, reply)
                except OSError:
                    return

    thread = threading.Thread(target=loop, name="cmlray-channel", daemon=True)
    thread.start()
    return thread


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError wraps the actor's exception
    if isinstance(cause, BaseException):
        return _describe(cause)
    if isinstance(exc, LookupError):
        return str(exc.args[0]) if exc.args else str(exc)
    text = " ".join(str(exc).split())
    if "QueueClosedError" in text:
        return "the queue is closed"
    return f"{type(exc).__name__}: {text[:500]}"
