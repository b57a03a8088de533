"""One worker's supervision inside its node agent: the guard, the program's pipes, its events.

For each worker the agent's event loop holds a :class:`WorkerSupervisor`: it
claims the worker's ``CDSW_APP_PORT``, starts its guard (a fork of the
agent's fork server, ``_forkserver.py``), sends it the program's spec, and
turns what comes back into events in the agent's :class:`~cmlray._outbox.Outbox`::

    ("placed",  {"ip", "node_id", "app_port", "gpus", "time"})
    ("started", {"pid", "time"})
    ("out" | "err", [line, ...])
    ("usage",   {"rss_bytes", "peak_rss_bytes", "cpu_s", "cores"})
    ("exited",  {"exit_code", "status", "reason", "time", "usage", "result", "error"})

Everything is read on the agent's one event loop (asyncio transports over the
guard's control socket and the program's two pipes): no thread per worker,
so a node runs hundreds of workers on one epoll. The program's requests
(queue items, its function, files sent home) come over a third socket,
answered by ``_services.py``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from cmlray import _cmdline, _forkserver, _guard, _ports
from cmlray._lines import LineSplitter
from cmlray._outbox import Outbox
from cmlray._services import ChannelProtocol, ProgramServices


@dataclass
class WorkerLaunch:
    """What a node agent needs to start one worker's program (built by the session)."""

    worker_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    grace_period_s: float = 5.0
    payload: bytes | None = None  # a cloudpickled (fn, args, kwargs), for fn= workers
    memory_limit_bytes: int | None = None
    timeout_s: float | None = None
    # Attached to a cluster: the program's environment starts from its node's
    # (the agent's), not the session's, whose paths may not exist there.
    node_env: bool = False
    home_dir: str = ""  # the session's project dir, on the session's host
    gpus: tuple[str, ...] = ()  # the GPU ids its reservation holds


@dataclass(frozen=True)
class Where:
    """The node an agent runs on."""

    ip: str
    node_id: str


def node_environment() -> dict[str, str]:
    """This node's environment, with its own interpreter's directory first on PATH.

    So that ``!pip``, ``!ray`` and ``python`` in a worker's shell commands are
    the node's, which run the program, never paths copied from the session.
    """
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env


def final_event(exit_code: int | None, status: str, reason: str) -> dict[str, Any]:
    return {"exit_code": exit_code, "status": status, "reason": reason, "time": time.time()}


class WorkerSupervisor:
    """Starts one worker's guard and program and reports what they do."""

    def __init__(
        self, launch: WorkerLaunch, where: Where, outbox: Outbox, services: ProgramServices
    ) -> None:
        self.launch = launch
        self.where = where
        self.outbox = outbox
        self.services = services
        self.ended = asyncio.Event()
        self._id = launch.worker_id
        self._stop: dict[str, Any] | None = None
        self._ctl: asyncio.Transport | None = None
        self._pipes: list[asyncio.ReadTransport] = []
        self._open = {"ctl", "out", "err"}
        self._started = False
        self._held: list[tuple[str, list[str], int]] = []  # output that came before "started"
        self._final: dict[str, Any] | None = None
        self._port: _ports.PortLease | None = None
        self._paused = False

    def stop(self, grace_period_s: float, status: str = "stopped", reason: str = "") -> None:
        """Ask the guard to stop the program's whole tree (SIGTERM, grace, SIGKILL)."""
        self._stop = {"stop": grace_period_s, "status": status, "reason": reason or status}
        if self._ctl is not None and not self._ctl.is_closing():
            self._ctl.write(json.dumps(self._stop).encode() + b"\n")

    async def run(self) -> None:
        """Start the program; returns once it has ended and its last event is out."""
        try:
            await self._start()
        except OSError as exc:
            words = _guard.limit_error(exc, "its node agent") or f"{type(exc).__name__}: {exc}"
            self._finish(final_event(None, "failed", f"cannot start it: {words}"))
        await self.ended.wait()

    async def _start(self) -> None:
        self._port = _ports.lease()
        self._put("placed", self._placed_event())
        if self._stop is not None:
            self._finish(final_event(None, self._stop["status"], self._stop["reason"]))
            return
        loop = asyncio.get_running_loop()
        ctl, guard_ctl = socket.socketpair()
        channel, program_channel = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        theirs = (guard_ctl.fileno(), out_w, err_w, program_channel.fileno())
        try:
            await loop.run_in_executor(None, _forkserver.start_guard, theirs)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            ctl.close()
            channel.close()
            raise
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
            guard_ctl.close()
            program_channel.close()
        await self._connect(loop, ctl, channel, out_r, err_r)

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        ctl: socket.socket,
        channel: socket.socket,
        out_r: int,
        err_r: int,
    ) -> None:
        ctl_transport, _ = await loop.connect_accepted_socket(lambda: _GuardLink(self), ctl)
        ctl_transport.write(json.dumps(self._spec()).encode() + b"\n")
        # Only now may a stop go to the guard: its first line must be the spec.
        self._ctl = ctl_transport
        if self._stop is not None:
            ctl_transport.write(json.dumps(self._stop).encode() + b"\n")
        await loop.connect_accepted_socket(lambda: ChannelProtocol(self.services), channel)
        for name, fd in (("out", out_r), ("err", err_r)):
            pipe = os.fdopen(fd, "rb", buffering=0)
            transport, _ = await loop.connect_read_pipe(
                functools.partial(_OutputPipe, self, name), pipe
            )
            self._pipes.append(transport)

    def _placed_event(self) -> dict[str, Any]:
        assert self._port is not None
        return {
            "ip": self.where.ip,
            "node_id": self.where.node_id,
            "app_port": self._port.port,
            "gpus": list(self.launch.gpus),
            "time": time.time(),
        }

    def _spec(self) -> dict[str, Any]:
        assert self._port is not None
        env = node_environment() if self.launch.node_env else {}
        env.update(self.launch.env)
        env["CDSW_IP_ADDRESS"] = self.where.ip
        env["CDSW_APP_PORT"] = str(self._port.port)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.launch.gpus)
        return {
            "argv": _cmdline.resolve_argv(self.launch.argv, sys.executable),
            "env": env,
            "cwd": self.launch.cwd,
            "grace_period_s": self.launch.grace_period_s,
            "memory_limit_bytes": self.launch.memory_limit_bytes,
            "timeout_s": self.launch.timeout_s,
            "cleanup_paths": [self._port.claim_path],
        }

    # What the guard and the pipes report ---------------------------------------------

    def on_guard_message(self, message: dict[str, Any]) -> None:
        if "pid" in message:
            self._started = True
            self._put("started", {"pid": message["pid"], "time": message["time"]})
            for kind, lines, size in self._held:
                self._put(kind, lines, size)
            self._held.clear()
        elif "error" in message:
            self._final = final_event(None, "failed", message["error"])
        elif "status" in message:
            final = final_event(message["exit_code"], message["status"], message["reason"])
            final["time"] = message.get("time", final["time"])
            final["usage"] = message.get("usage")
            self._final = final
        elif "usage" in message:
            self._put("usage", message["usage"])

    def on_output(self, stream: str, lines: list[str]) -> None:
        size = sum(len(line) + 1 for line in lines)
        if not self._started and "ctl" in self._open:  # events must say it started first
            self._held.append((stream, lines, size))
            return
        self._put(stream, lines, size)
        if not self._paused and self.outbox.over_cap(self._id):
            self._pause()

    def on_closed(self, name: str) -> None:
        self._open.discard(name)
        if name == "ctl":
            self._ctl = None
            for kind, lines, size in self._held:  # the guard died before saying it started
                self._put(kind, lines, size)
            self._held.clear()
        if not self._open:
            final = self._final or final_event(None, "failed", "its guard process died")
            self._finish(final)

    def _pause(self) -> None:
        self._paused = True
        for pipe in self._pipes:
            pipe.pause_reading()
        self.outbox.pause(self._id, self._resume)

    def _resume(self) -> None:
        self._paused = False
        for pipe in self._pipes:
            if not pipe.is_closing():
                pipe.resume_reading()

    def _finish(self, final: dict[str, Any]) -> None:
        if self.ended.is_set():
            return
        final.update(self.services.final_fields())
        if self._port is not None:
            self._port.release()
        self._put("exited", final)
        self.ended.set()

    def _put(self, kind: str, payload: Any, size: int = 0) -> None:
        self.outbox.put(self._id, kind, payload, size)


class _GuardLink(asyncio.Protocol):
    """The guard's control socket: JSON lines in, stop requests out."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self._supervisor = supervisor
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._supervisor.on_guard_message(json.loads(line))

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self._supervisor.on_closed("ctl")


class _OutputPipe(asyncio.Protocol):
    """One of the program's pipes (stdout or stderr), cut into lines."""

    def __init__(self, supervisor: WorkerSupervisor, stream: str) -> None:
        self._supervisor = supervisor
        self._stream = stream
        self._splitter = LineSplitter()

    def data_received(self, data: bytes) -> None:
        lines = self._splitter.feed(data)
        if lines:
            self._supervisor.on_output(self._stream, lines)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        rest = self._splitter.flush()
        if rest:
            self._supervisor.on_output(self._stream, rest)
        self._supervisor.on_closed(self._stream)
