"""The worker actor: holds a worker's Ray resources and streams its events.

:class:`WorkerActor` is a plain class (unit-testable without Ray); the session
makes it remote with the worker's CPU, memory and GPU request. Its ``run``
method is a streaming generator: it starts the guard (which starts the
program), then yields batches of events as they happen::

    ("placed",  {"ip", "node_id", "app_port", "gpus", "time"})
    ("started", {"pid", "time"})
    ("out" | "err", [line, ...])
    ("usage",   {"rss_bytes", "peak_rss_bytes", "cpu_s", "cores"})
    ("exited",  {"exit_code", "status", "reason", "time", "usage"})

``stop`` runs on a second thread of the actor (``max_concurrency >= 2``)
while ``run`` streams: Ray cannot interrupt a running sync method.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from cmlray import _ports, _process
from cmlray._channel import CHANNEL_ENV
from cmlray._forkserver import start_guard
from cmlray._lines import LineSplitter
from cmlray._services import ProgramServices, serve_channel

Event = tuple[str, Any]

_READ_SIZE = 1 << 16
_BATCH_MAX_LINES = 4096
_BATCH_MAX_BYTES = 1 << 20
_BATCH_WINDOW_S = 0.002


@dataclass(frozen=True)
class Placement:
    """Where the actor landed: filled in from Ray inside the actor."""

    ip: str
    node_id: str
    gpus: tuple[str, ...] = ()


@dataclass
class WorkerLaunch:
    """What the actor needs to start a program (built by the session)."""

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


def ray_placement() -> Placement:
    """This actor's node and GPUs, as Ray assigned them."""
    import ray

    context = ray.get_runtime_context()
    gpus = context.get_accelerator_ids().get("GPU", [])
    return Placement(
        ip=ray.util.get_node_ip_address(),
        node_id=context.get_node_id(),
        gpus=tuple(str(gpu) for gpu in gpus),
    )


class WorkerActor:
    """Starts one worker's program under a guard and reports what it does."""

    def __init__(
        self, launch: WorkerLaunch, placement: Placement | None = None, home: Any = None
    ) -> None:
        self.launch = launch
        self.placement = placement
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = None
        self._stop: dict[str, Any] | None = None
        self._port_lease: _ports.PortLease | None = None
        self.services = ProgramServices(launch.worker_id, launch.payload, home, launch.home_dir)

    def ready(self) -> bool:
        """Answers once the actor is placed (used by tests and the session)."""
        return True

    def stop(self, grace_period_s: float, status: str = "stopped", reason: str = "") -> None:
        """Ask the guard to stop the program's whole tree (SIGTERM, grace, SIGKILL)."""
        message = {"stop": grace_period_s, "status": status, "reason": reason or status}
        with self._lock:
            self._stop = message
            if self._ctl is not None:
                with contextlib.suppress(OSError):  # the program ended meanwhile: nothing to stop
                    self._ctl.sendall(json.dumps(message).encode() + b"\n")

    def run(self) -> Iterator[list[Event]]:
        """Start the program and stream its events until it has ended."""
        placement = self.placement or ray_placement()
        self._port_lease = _ports.lease()
        try:
            yield [("placed", self._placed_event(placement))]
            yield from self._run_program(placement)
        finally:
            self._port_lease.release()

    def _placed_event(self, placement: Placement) -> dict[str, Any]:
        assert self._port_lease is not None
        return {
            "ip": placement.ip,
            "node_id": placement.node_id,
            "app_port": self._port_lease.port,
            "gpus": list(placement.gpus),
            "time": time.time(),
        }

    def _program_env(self, placement: Placement) -> dict[str, str]:
        assert self._port_lease is not None
        env = node_environment() if self.launch.node_env else {}
        env.update(self.launch.env)
        env["CDSW_IP_ADDRESS"] = placement.ip
        env["CDSW_APP_PORT"] = str(self._port_lease.port)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpus)
        return env

    def _run_program(self, placement: Placement) -> Iterator[list[Event]]:
        ctl, guard_ctl = socket.socketpair()
        channel, program_channel = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds = (guard_ctl.fileno(), out_w, err_w, program_channel.fileno())
        with self._lock:
            if self._stop is not None:
                yield [("exited", _final(None, self._stop["status"], self._stop["reason"]))]
                return
            start_guard(fds)
        for fd in (out_w, err_w):
            os.close(fd)
        guard_ctl.close()
        env = self._program_env(placement)
        env[CHANNEL_ENV] = str(program_channel.fileno())
        spec = {
            "argv": _process.resolve_argv(self.launch.argv, sys.executable),
            "env": env,
            "cwd": self.launch.cwd or os.getcwd(),
            "grace_period_s": self.launch.grace_period_s,
            "pass_fds": [program_channel.fileno()],
            "memory_limit_bytes": self.launch.memory_limit_bytes,
            "timeout_s": self.launch.timeout_s,
            "cleanup_paths": [self._port_lease.claim_path] if self._port_lease else [],
        }
        program_channel.close()
        serve_channel(channel, self.services)
        ctl.sendall(json.dumps(spec).encode() + b"\n")
        # Only now may stop() write to the guard: its first line must be the spec
        # (a stop written before it was read as the spec: "the guard process died").
        with self._lock:
            self._ctl = ctl
            if self._stop is not None:  # stop() came before the spec: send it after
                ctl.sendall(json.dumps(self._stop).encode() + b"\n")
        events = _Stream(ctl, out_r, err_r).events()
        try:
            for batch in events:
                kind, final = batch[-1]
                if kind == "exited":
                    final.update(self.services.final_fields())
                yield batch
        finally:
            # At once, not when the garbage collector gets to it: closing the
            # control socket is what tells the guard to end the program.
            events.close()


def node_environment() -> dict[str, str]:
    """This node's environment, with its own interpreter's directory first on PATH.

    So that ``!pip``, ``!ray`` and ``python`` in a worker's shell commands are
    the node's, which run the program, never paths copied from the session.
    """
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env


def _final(exit_code: int | None, status: str, reason: str) -> dict[str, Any]:
    return {"exit_code": exit_code, "status": status, "reason": reason, "time": time.time()}


class _Stream:
    """Multiplexes the guard's control socket and the program's two pipes."""

    def __init__(self, ctl: socket.socket, out_fd: int, err_fd: int) -> None:
        self.ctl = ctl
        self.selector = selectors.DefaultSelector()
        self.selector.register(ctl, selectors.EVENT_READ, "ctl")
        self.selector.register(out_fd, selectors.EVENT_READ, "out")
        self.selector.register(err_fd, selectors.EVENT_READ, "err")
        self.splitters = {"out": LineSplitter(), "err": LineSplitter()}
        self.ctl_buffer = b""
        self.final: dict[str, Any] | None = None
        self.open = {"ctl", "out", "err"}
        self.started = False

    def events(self) -> Generator[list[Event], None, None]:
        try:
            while self.open:
                batch = self._collect()
                if batch:
                    yield batch
            yield [("exited", self._final_event())]
        finally:
            self.selector.close()
            self.ctl.close()

    def _final_event(self) -> dict[str, Any]:
        if self.final is None:
            return _final(None, "failed", "the guard process died")
        return self.final

    def _collect(self) -> list[Event]:
        """What arrived by ``_BATCH_WINDOW_S`` after the first read.

        Sleeping a moment after the first read lets a program's many small
        writes pile up in the pipe, to be taken in a few large reads and sent
        as one batch (one Ray object instead of hundreds, and far fewer
        wake-ups competing with the program for the CPU), at the cost of a
        few milliseconds of latency.
        """
        batch: list[Event] = []
        size = 0
        timeout: float | None = None
        while self.open and len(batch) < _BATCH_MAX_LINES and size < _BATCH_MAX_BYTES:
            ready = self.selector.select(timeout)
            if not ready:
                break
            for key, _ in ready:
                size += self._read(key, batch)
            if timeout is None:
                time.sleep(_BATCH_WINDOW_S)
                timeout = 0
        return batch

    def _read(self, key: selectors.SelectorKey, batch: list[Event]) -> int:
        name = key.data
        try:
            # Never block: _await_started may have read what made the socket ready.
            data = (
                self.ctl.recv(_READ_SIZE, socket.MSG_DONTWAIT)
                if name == "ctl"
                else os.read(key.fd, _READ_SIZE)
            )
        except BlockingIOError:
            return 0
        if not data:
            self._close(key, name, batch)
        elif name == "ctl":
            self._control(data, batch)
        else:
            if not self.started:
                self._await_started(batch)
            lines = self.splitters[name].feed(data)
            if lines:
                batch.append((name, lines))
        return len(data)

    def _await_started(self, batch: list[Event]) -> None:
        """Read the guard's "started" before the program's first output.

        The program may print before the guard has sent its pid; events must
        still say it started first. The guard sends the pid right after the
        spawn, so this wait is short.
        """
        while not self.started and "ctl" in self.open:
            data = self.ctl.recv(_READ_SIZE)
            if not data:
                return  # the guard died; _close reports it when the selector sees EOF
            self._control(data, batch)

    def _close(self, key: selectors.SelectorKey, name: str, batch: list[Event]) -> None:
        self.selector.unregister(key.fileobj)
        self.open.discard(name)
        if name != "ctl":
            os.close(key.fd)
            rest = self.splitters[name].flush()
            if rest:
                batch.append((name, rest))

    def _control(self, data: bytes, batch: list[Event]) -> None:
        self.ctl_buffer += data
        *lines, self.ctl_buffer = self.ctl_buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "pid" in message:
                self.started = True
                batch.append(("started", {"pid": message["pid"], "time": message["time"]}))
            elif "error" in message:
                self.final = _final(None, "failed", message["error"])
            elif "status" in message:
                self.final = _final(message["exit_code"], message["status"], message["reason"])
                self.final["time"] = message.get("time", self.final["time"])
                self.final["usage"] = message.get("usage")
            elif "usage" in message:
                batch.append(("usage", message["usage"]))
