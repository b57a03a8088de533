"""Starting guards without starting an interpreter for each.

A guard used to start as ``python -I -S _guard.py FD...``: about 30 ms of CPU
per worker, as much as a small program of its own. Now each node agent keeps
one *fork server*, a single-threaded process that has loaded the guard's code
once, and a guard is a fork of it (about 1 ms). The agent hands the server the
guard's file descriptors over a Unix socket (``SCM_RIGHTS``); the child moves
them to the lowest numbers (3, 4, ...: an agent with hundreds of workers holds
numbers in the thousands) and runs the guard's ``main`` on them, exactly as
the script would (which detaches it from the server at once).

The server reads requests until its socket closes, which happens when the
agent's process ends, however it ends: it then exits. A request the server
cannot take (it died, say) is started the old way, as a script; so is every
guard of a process that did not ``enable`` the server (unit tests that
supervise a program from the test process itself).

Standard library only, run as ``_standalone.command("cmlray._forkserver", SOCKET_FD)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from cmlray import _guard, _standalone

_MAX_FDS = 16
_LOWEST_FREE_FD = 3


def exec_guard(fds: Sequence[int]) -> None:
    """Start a guard as its own interpreter (the fallback); returns once it detached."""
    argv = _standalone.command("cmlray._guard", *map(str, fds))
    subprocess.run(argv, pass_fds=tuple(fds), stdin=subprocess.DEVNULL, check=True)


class GuardStarter:
    """The agent's side: starts guards through its fork server (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None

    def start(self, fds: Sequence[int]) -> None:
        """Start a guard on ``fds``; returns once it has them (as ``exec_guard``)."""
        with self._lock:
            try:
                sock = self._connected()
                socket.send_fds(sock, [json.dumps(len(fds)).encode()], list(fds))
                if sock.recv(1) == b"k":
                    return
            except OSError:
                pass
            self._close()
        exec_guard(fds)

    def _connected(self) -> socket.socket:
        if self._sock is None:
            ours, theirs = socket.socketpair()
            self._server = subprocess.Popen(
                _standalone.command("cmlray._forkserver", str(theirs.fileno())),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._sock = ours
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=1)
        self._sock = self._server = None

    close = _close


_starter: GuardStarter | None = None


def enable() -> None:
    """Start this process's guards through a fork server (a node agent calls it once)."""
    global _starter
    if _starter is None:
        _starter = GuardStarter()


def start_guard(fds: Sequence[int]) -> None:
    """Start a guard on ``fds``: forked if ``enable`` was called, else as a script."""
    if _starter is None:
        exec_guard(fds)
    else:
        _starter.start(fds)


def _renumber(received: list[int]) -> list[int]:
    """Move the received fds to the lowest numbers (3, 4, ...); returns those numbers."""
    import fcntl

    floor = max([*received, _LOWEST_FREE_FD + len(received)]) + 1  # nothing in play is clobbered
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in received]
    for fd in received:
        os.close(fd)
    wanted = list(range(_LOWEST_FREE_FD, _LOWEST_FREE_FD + len(received)))
    for fd, number in zip(moved, wanted, strict=True):
        os.dup2(fd, number)  # inheritable, as pass_fds makes them for the script
        os.close(fd)
    return wanted


def _child(sock: socket.socket, received: list[int]) -> None:
    sock.close()
    code = 1
    try:
        code = _guard.main(["_guard", *map(str, _renumber(received))])
    finally:
        os._exit(code)


def _refuse(ctl_fd: int, exc: OSError) -> None:
    """Tell a guard's agent, on the guard's control socket, that it could not be forked."""
    words = _guard.limit_error(exc) or f"fork failed: {exc}"
    message = json.dumps({"error": f"cannot start its guard: {words}"}) + "\n"
    with contextlib.suppress(OSError):
        os.write(ctl_fd, message.encode())


def serve(sock: socket.socket) -> int:
    """Fork a guard for each request until the agent's end of ``sock`` closes."""
    os.chdir("/")
    while True:
        try:
            message, received, _flags, _addr = socket.recv_fds(sock, 4096, _MAX_FDS)
        except OSError:
            return 0
        if not message:
            return 0
        try:
            pid = os.fork()
        except OSError as exc:  # the node's limits: the guard's agent reads why on its socket
            _refuse(received[0], exc)
            pid = 0
        else:
            if pid == 0:
                _child(sock, received)
        for fd in received:
            os.close(fd)
        if pid:
            os.waitpid(pid, 0)  # the guard detaches at once: this is its first process
        try:
            sock.sendall(b"k")
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=int(sys.argv[1]))))
