"""One worker's supervision inside its node agent: the guard, the program's pipes, its events.

For each worker the agent's event loop holds a :class:`WorkerSupervisor`: it
claims the worker's ``CDSW_APP_PORT``, makes the guard's sockets and the
program's pipes (``prepare``), has the guard started (the agent starts a
batch of guards at once through its fork server, ``_forkserver.py``), sends
it the program's spec (``attach``), and turns what comes back into events in
the agent's :class:`~cmlray._outbox.Outbox`::

    ("placed",  {"ip", "node_id", "app_port", "gpus", "time"})
    ("started", {"pid", "time"})
    ("out" | "err", [line, ...])
    ("usage",   {"rss_bytes", "peak_rss_bytes", "cpu_s", "cores"})
    ("exited",  {"exit_code", "status", "reason", "time", "usage", "result", "error"})

Everything is read on the agent's one event loop, by readers on the raw
descriptors (``loop.add_reader``): no thread, transport or task per worker,
so a node runs hundreds of workers on one epoll at little cost each. The
program's requests (queue items, its function, files sent home) come over a
third socket, answered by ``_services.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from cmlray import _cmdline, _forkserver, _ports, _proctree, _zygote
from cmlray._launch import Where, WorkerLaunch
from cmlray._lines import LineSplitter
from cmlray._outbox import Outbox
from cmlray._services import ChannelServer, ProgramServices

_READ_BYTES = 1 << 16


def node_environment() -> dict[str, str]:
    """This node's environment, with its own interpreter's directory first on PATH.

    So that ``!pip``, ``!ray`` and ``python`` in a worker's shell commands are
    the node's, which run the program, never paths copied from the session.
    """
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env


@functools.cache
def program_niceness() -> int | None:
    """The priority a worker's program runs at: its node's, not the agent's.

    Ray starts its worker processes, the agent among them, at niceness 15
    (``RAY_worker_niceness``), below its own services; its job manager
    starts job drivers at 0 instead. A worker's program is the user's
    workload, as a CML engine is: it runs at the niceness of the agent's
    parent (the raylet; with an own head, the session: the node's own),
    where the node allows raising it.
    """
    try:
        return os.getpriority(os.PRIO_PROCESS, os.getppid())
    except OSError:
        return None


def final_event(exit_code: int | None, status: str, reason: str) -> dict[str, Any]:
    return {"exit_code": exit_code, "status": status, "reason": reason, "time": time.time()}


def cannot_start(exc: OSError) -> dict[str, Any]:
    """The final event of a worker whose guard could not be started, naming why."""
    words = _proctree.limit_error(exc, "its node agent") or f"{type(exc).__name__}: {exc}"
    return final_event(None, "failed", f"cannot start it: {words}")


class WorkerSupervisor:
    """Starts one worker's guard and program and reports what they do."""

    def __init__(
        self,
        launch: WorkerLaunch,
        where: Where,
        outbox: Outbox,
        services: ProgramServices,
        on_ended: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self.launch = launch
        self.where = where
        self.outbox = outbox
        self.services = services
        self.ended = asyncio.Event()
        self._on_ended = on_ended
        self._id = launch.worker_id
        self._loop = asyncio.get_running_loop()
        self._stop: dict[str, Any] | None = None
        self._ctl: socket.socket | None = None
        self._ctl_buffer = b""
        self._pipes: dict[str, tuple[int, LineSplitter]] = {}
        self._channel: ChannelServer | None = None
        self._theirs: tuple[int, ...] = ()
        self._open = {"ctl", "out", "err"}
        self._started = False
        self._held: list[tuple[str, list[str], int]] = []  # output that came before "started"
        self._final: dict[str, Any] | None = None
        self._port: _ports.PortLease | None = None
        self._paused = False
        self._program: dict[str, Any] = {}  # the spec the guard gets, made in prepare

    # Starting: prepare, (the agent starts the guards of a batch), attach ------------

    def prepare(self) -> tuple[int, ...] | None:
        """Claim the port, make the descriptors; the guard's, or None if it must not start."""
        try:
            self._port = _ports.lease()
            self._put("placed", self._placed_event())
            if self._stop is not None:
                self._finish(final_event(None, self._stop["status"], self._stop["reason"]))
                return None
            ctl, guard_ctl = socket.socketpair()
            channel, program_channel = socket.socketpair()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
        except OSError as exc:
            self._finish(cannot_start(exc))
            return None
        self._ctl = ctl
        self._channel = ChannelServer(channel, self.services, self._loop)
        self._pipes = {"out": (out_r, LineSplitter()), "err": (err_r, LineSplitter())}
        self._theirs = (guard_ctl.detach(), out_w, err_w, program_channel.detach())
        self._program = self._spec()
        return self._theirs

    def zygote_key(self) -> _zygote.Key | None:
        """The zygote that can fork this worker's program, once prepared (``_zygote.py``)."""
        return _zygote.startup_key(self._program["argv"], self._program["env"])

    def attach(self, error: OSError | None = None) -> None:
        """The guard has its descriptors (or could not start): send the spec, read on."""
        for fd in self._theirs:
            os.close(fd)
        self._theirs = ()
        if error is not None:
            self._close_all()
            self._finish(cannot_start(error))
            return
        assert self._ctl is not None and self._channel is not None
        self._ctl.sendall(json.dumps(self._program).encode() + b"\n")
        if self._stop is not None:  # only after the spec: the guard's first line must be it
            self._ctl.sendall(json.dumps(self._stop).encode() + b"\n")
        self._ctl.setblocking(False)
        self._loop.add_reader(self._ctl.fileno(), self._read_ctl)
        self._channel.start()
        for name, (fd, _) in self._pipes.items():
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._read_pipe, name)

    def stop(self, grace_period_s: float, status: str = "stopped", reason: str = "") -> None:
        """Ask the guard to stop the program's whole tree (SIGTERM, grace, SIGKILL)."""
        self._stop = {"stop": grace_period_s, "status": status, "reason": reason or status}
        if self._ctl is not None and not self._theirs and "ctl" in self._open:
            with contextlib.suppress(OSError):  # the guard ended meanwhile: nothing to stop
                self._ctl.send(json.dumps(self._stop).encode() + b"\n")

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
            "niceness": program_niceness(),
            "cleanup_paths": [self._port.claim_path],
        }

    # What the guard and the pipes report ---------------------------------------------

    def _read_ctl(self) -> None:
        assert self._ctl is not None
        try:
            data = self._ctl.recv(_READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed("ctl")
            return
        self._ctl_buffer += data
        *lines, self._ctl_buffer = self._ctl_buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._on_guard_message(json.loads(line))

    def _on_guard_message(self, message: dict[str, Any]) -> None:
        if "pid" in message:
            self._started = True
            self._put("started", {"pid": message["pid"], "time": message["time"]})
            self._release_held()
        elif "error" in message:
            self._final = final_event(None, "failed", message["error"])
        elif "status" in message:
            final = final_event(message["exit_code"], message["status"], message["reason"])
            final["time"] = message.get("time", final["time"])
            final["usage"] = message.get("usage")
            self._final = final
        elif "usage" in message:
            self._put("usage", message["usage"])

    def _read_pipe(self, name: str) -> None:
        fd, splitter = self._pipes[name]
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return
        lines = splitter.feed(data) if data else splitter.flush()
        if lines:
            self._output(name, lines)
        if not data:
            self._closed(name)

    def _output(self, stream: str, lines: list[str]) -> None:
        size = sum(len(line) + 1 for line in lines)
        if not self._started and "ctl" in self._open:  # events must say it started first
            self._held.append((stream, lines, size))
            return
        self._put(stream, lines, size)
        if not self._paused and self.outbox.over_cap(self._id):
            self._pause()

    def _release_held(self) -> None:
        for kind, lines, size in self._held:
            self._put(kind, lines, size)
        self._held.clear()

    def _closed(self, name: str) -> None:
        self._open.discard(name)
        if name == "ctl":
            assert self._ctl is not None
            self._loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._release_held()  # the guard died before saying it started
        else:
            fd, _ = self._pipes[name]
            self._loop.remove_reader(fd)
            os.close(fd)
        if not self._open:
            self._finish(self._final or final_event(None, "failed", "its guard process died"))

    def _pause(self) -> None:
        self._paused = True
        for name in self._open - {"ctl"}:
            self._loop.remove_reader(self._pipes[name][0])
        self.outbox.pause(self._id, self._resume)

    def _resume(self) -> None:
        self._paused = False
        for name in self._open - {"ctl"}:
            self._loop.add_reader(self._pipes[name][0], self._read_pipe, name)

    def _close_all(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
        for fd, _ in self._pipes.values():
            os.close(fd)
        if self._channel is not None:
            self._channel.close()
        self._open.clear()

    def _finish(self, final: dict[str, Any]) -> None:
        if self.ended.is_set():
            return
        final.update(self.services.final_fields())
        if self._port is not None:
            self._port.release()
        if self._channel is not None:
            self._channel.close()
        self._put("exited", final)
        self.ended.set()
        self._on_ended(self._id)

    def _put(self, kind: str, payload: Any, size: int = 0) -> None:
        self.outbox.put(self._id, kind, payload, size)


async def start_all(supervisors: list[WorkerSupervisor]) -> None:
    """Start these workers' guards in batches through the fork servers, then attach them.

    One batch per server: each zygote's (``_zygote.py``) and the bare one's.

    Forking blocks, so the batch goes to a thread while the loop goes on
    serving the other workers.
    """
    starting = [(s, fds) for s in supervisors if (fds := s.prepare()) is not None]
    by_zygote: dict[_zygote.Key | None, list[tuple[WorkerSupervisor, tuple[int, ...]]]] = {}
    for supervisor, fds in starting:
        by_zygote.setdefault(supervisor.zygote_key(), []).append((supervisor, fds))
    for zygote, group in by_zygote.items():
        batch = [fds for _, fds in group]
        errors = await asyncio.to_thread(_forkserver.start_guards, batch, zygote)
        for (supervisor, _), error in zip(group, errors, strict=True):
            supervisor.attach(error)
