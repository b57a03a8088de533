"""The guard: the process that owns a worker's program and outlives its actor.

Run by the worker's actor as ``python -I -S _guard.py CTL_FD OUT_FD ERR_FD [FD...]``
(the further fds are passed on to the program: its channel to the actor).
It forks once more and the first process exits, so the guard is no longer a
child of the actor: when the actor's process ends, Ray SIGKILLs that
process's direct children, and a supervisor that is one cannot clean up
(DESIGN 4). The guard makes itself a child subreaper, so every process the
program starts stays below it, ``setsid`` daemons included.

Protocol on the control socket (JSON, one object a line):

- actor -> guard, first: ``{"argv", "env", "cwd", "grace_period_s"}``;
  later ``{"stop": grace_s, "status": "stopped"|"timedout", "reason": text}``.
- guard -> actor: ``{"pid"}`` once started, or ``{"error"}``; then
  ``{"usage": {"rss_bytes", "peak_rss_bytes", "cpu_s", "cores"}}`` about every
  ``USAGE_INTERVAL_S`` while it runs, when the figures changed;
  ``{"exit_code", "reason", "status", "usage"}`` when the program ended;
  ``{"done"}`` once every descendant is gone.

When the control socket closes (the actor died, whatever the cause), the
guard stops the whole tree and exits: this is what makes a worker's program
and all it started end with the session on every exit path.

Standard library only: it must start fast in a bare interpreter.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import time
from types import ModuleType
from typing import Any

_LEFTOVER_GRACE_S = 2.0
_ORPHAN_GRACE_S = 3.0
_MEMORY_CHECK_S = 0.25
_MEMORY_GRACE_S = 1.0
USAGE_INTERVAL_S = 1.0
GIB = 1 << 30


def _load_sibling(name: str) -> ModuleType:
    """A stdlib-only module of cmlray's, loaded by path (no cmlray import here)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"cmlray_guard{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


proc = _load_sibling("_process")
usage = _load_sibling("_usage")


class Guard:
    """Supervises one program; see the module docstring for the protocol."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.buffer = b""
        self.program: Any = None
        self.exit_status: int | None = None
        self.final: dict[str, Any] | None = None
        self.terminated = False
        self.spec: dict[str, Any] = {}
        self.early: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.ended_at = time.time()
        self.meter = usage.UsageMeter(os.getpid())
        self.usage_due = time.monotonic()

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps(message).encode() + b"\n")

    def read_messages(self) -> list[dict[str, Any]] | None:
        """Messages now readable on the control socket; None at EOF."""
        try:
            data = self.ctl.recv(65536)
        except OSError:
            data = b""
        if not data:
            return None
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def read_spec(self) -> dict[str, Any] | None:
        while True:
            messages = self.read_messages()
            if messages is None:
                return None
            if messages:
                self.early = messages[1:]  # a stop sent right after the spec, in one read
                return messages[0]

    def record(self, reaped: dict[int, int]) -> None:
        if self.program is not None and self.program.pid in reaped:
            self.exit_status = reaped[self.program.pid]
            self.ended_at = time.time()

    def stop(self, grace_period_s: float, status: str, reason: str) -> None:
        self.final = {"status": status, "reason": reason}
        pgid = self.program.pid if self.program is not None else None
        proc.terminate_tree(os.getpid(), pgid, grace_period_s, self.record)

    def report_exit(self) -> None:
        assert self.exit_status is not None
        code, words = proc.describe_status(self.exit_status)
        if self.final is not None:
            status, reason = self.final["status"], self.final["reason"]
        elif code == 0:
            status, reason = "succeeded", "exit code 0"
        else:
            status, reason = "failed", words
        final = self.meter.final_report()
        self.send(
            {"exit_code": code, "status": status, "reason": reason, "time": self.ended_at}
            | {"usage": final}
        )

    def tick_s(self) -> float:
        """How long to wait for news before checking the limits or sampling usage again."""
        now = time.monotonic()
        tick = max(0.0, self.usage_due - now) if self.final is None else 1.0
        if self.spec.get("memory_limit_bytes"):
            tick = min(tick, _MEMORY_CHECK_S)
        timeout_s = self.spec.get("timeout_s")
        if timeout_s:
            tick = min(tick, max(0.0, self.started + float(timeout_s) - now))
        return tick

    def sample_usage(self) -> None:
        """Sample the tree's usage when due; tell the actor when the figures changed."""
        now = time.monotonic()
        if now < self.usage_due:
            return
        self.usage_due = now + USAGE_INTERVAL_S
        self.meter.sample()
        report = self.meter.changed_report()
        if report is not None:
            self.send({"usage": report})

    def check_limits(self) -> None:
        """Stop the program when it ran too long or its tree uses too much memory."""
        timeout_s = self.spec.get("timeout_s")
        grace_s = float(self.spec.get("grace_period_s", 5.0))
        if timeout_s and time.monotonic() - self.started >= timeout_s:
            self.stop(grace_s, "timedout", f"timed out after {timeout_s:g} s")
            return
        limit = self.spec.get("memory_limit_bytes")
        if limit:
            used = self.meter.sample()
            if used > limit:
                words = f"exceeded memory: used {used / GIB:.2f} GiB of {limit / GIB:.2f} GiB"
                self.stop(min(grace_s, _MEMORY_GRACE_S), "failed", words)

    def obey(self, messages: list[dict[str, Any]]) -> None:
        """Carry out the stop requests among ``messages``."""
        for message in messages:
            if "stop" in message:
                self.stop(float(message["stop"]), message["status"], message["reason"])

    def serve(self, wake_fd: int) -> None:
        """Wait for the program to end, a stop request, a limit, or the actor's death."""
        self.obey(self.early)
        while self.exit_status is None:
            watched: list[Any] = [self.ctl, wake_fd]
            readable = select.select(watched, [], [], self.tick_s())[0]
            if wake_fd in readable:
                _drain(wake_fd)
            self.record(proc.reap_children())
            if self.terminated and self.exit_status is None:
                self.stop(_ORPHAN_GRACE_S, "failed", "its guard was terminated (SIGTERM)")
                break
            if self.ctl in readable and self.exit_status is None:
                messages = self.read_messages()
                if messages is None:
                    self.stop(_ORPHAN_GRACE_S, "failed", "actor died")
                    return
                self.obey(messages)
            if self.exit_status is None and self.final is None:
                self.check_limits()
                self.sample_usage()
        self.report_exit()
        proc.terminate_tree(os.getpid(), None, _LEFTOVER_GRACE_S, self.record)
        self.send({"done": True})


def _spawn_error(spec: dict[str, Any], exc: OSError) -> str:
    """Why the program could not start, naming what is really missing."""
    node = socket.gethostname()
    if not os.path.isdir(spec["cwd"]):
        return f"cannot start it: its working directory {spec['cwd']!r} does not exist on {node}"
    return f"cannot start {spec['argv'][0]!r} on {node}: {exc.strerror or exc}"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _detach() -> None:
    """Fork away from the actor: the parent returns at once, the child goes on.

    The guard also leaves the actor's working directory (inside Ray's temp
    dir, which the head reaper sweeps).
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")


def main(argv: list[str]) -> int:
    ctl_fd, out_fd, err_fd, *extra_fds = (int(arg) for arg in argv[1:])
    _detach()
    proc.become_subreaper()
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    guard = Guard(socket.socket(fileno=ctl_fd))

    def on_sigterm(_signum: int, _frame: object) -> None:
        guard.terminated = True

    signal.signal(signal.SIGTERM, on_sigterm)
    spec = guard.read_spec()
    if spec is None:
        return 0
    guard.spec = spec
    try:
        return _run(guard, spec, out_fd, err_fd, extra_fds, wake_r)
    finally:
        for path in spec.get("cleanup_paths", ()):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _run(
    guard: Guard, spec: dict[str, Any], out_fd: int, err_fd: int, extra_fds: list[int], wake_r: int
) -> int:
    try:
        guard.program = proc.spawn(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            stdout_fd=out_fd,
            stderr_fd=err_fd,
            pass_fds=spec.get("pass_fds", ()),
        )
    except OSError as exc:
        guard.send({"error": _spawn_error(spec, exc)})
        return 1
    finally:
        for fd in (out_fd, err_fd, *extra_fds):
            os.close(fd)
    guard.started = guard.usage_due = time.monotonic()
    guard.send({"pid": guard.program.pid, "time": time.time()})
    guard.serve(wake_r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
