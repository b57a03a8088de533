"""Starting guards without starting an interpreter for each.

A guard used to start as ``python -I -S _guard.py FD...``: about 30 ms of CPU
per worker, as much as a small program of its own. Now each node agent keeps
one *fork server*, a single-threaded process that has loaded the guard's code
once, and a guard is a fork of it (about 1 ms). The agent hands the server the
guard's file descriptors over a Unix socket (``SCM_RIGHTS``), with the numbers
they have in the agent: the child moves them back to those numbers, since the
guard's spec names them, then runs the guard's ``main`` exactly as the script
would (which detaches it from the server at once).

The server reads requests until its socket closes, which happens when the
agent's process ends, however it ends: it then exits. A request the server
cannot take (it died, say) is started the old way, as a script; so is every
guard of a process that did not ``enable`` the server (the unit tests'
actors, which run in the test process itself).

Standard library only, run as ``python -I -S _forkserver.py SOCKET_FD``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
GUARD_PATH = os.path.join(_HERE, "_guard.py")
_MAX_FDS = 16


def exec_guard(fds: Sequence[int]) -> None:
    """Start a guard as its own interpreter (the fallback); returns once it detached."""
    argv = [sys.executable, "-I", "-S", GUARD_PATH, *map(str, fds)]
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
                socket.send_fds(sock, [json.dumps(list(fds)).encode()], list(fds))
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
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno())],
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


def _load_guard() -> object:
    spec = importlib.util.spec_from_file_location("cmlray_forked_guard", GUARD_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _renumber(received: list[int], wanted: list[int]) -> None:
    """Give each received fd the number it had in the agent (the guard's spec names those)."""
    import fcntl

    floor = max([*received, *wanted]) + 1  # above every number in play: nothing is clobbered
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, number in zip(moved, wanted, strict=True):
        os.dup2(fd, number)  # inheritable, as pass_fds made them for the script
        os.close(fd)


def _child(sock: socket.socket, guard: object, received: list[int], wanted: list[int]) -> None:
    sock.close()
    code = 1
    try:
        _renumber(received, wanted)
        code = guard.main(["_guard.py", *map(str, wanted)])  # type: ignore[attr-defined]
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> int:
    """Fork a guard for each request until the agent's end of ``sock`` closes."""
    guard = _load_guard()
    os.chdir("/")
    while True:
        try:
            message, received, _flags, _addr = socket.recv_fds(sock, 4096, _MAX_FDS)
        except OSError:
            return 0
        if not message:
            return 0
        wanted = [int(fd) for fd in json.loads(message)]
        pid = os.fork()
        if pid == 0:
            _child(sock, guard, received, wanted)
        for fd in received:
            os.close(fd)
        os.waitpid(pid, 0)  # the guard detaches at once: this is its first process
        try:
            sock.sendall(b"k")
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=int(sys.argv[1]))))
