"""Starting guards without starting an interpreter for each.

A guard used to start as ``python -I -S _guard.py FD...``: about 30 ms of CPU
per worker, as much as a small program of its own. Now each node agent keeps
one *fork server*, a single-threaded process that has loaded the guard's code
once, and a guard is a fork of it (about 1 ms). The agent hands the server the
guard's file descriptors over a Unix socket (``SCM_RIGHTS``); the child moves
them to the lowest numbers (3, 4, ...: an agent with hundreds of workers holds
numbers in the thousands) and runs the guard's ``main`` on them. A forked
guard needs no second fork to leave the agent (it is no child of the agent's
Ray worker process): the server answers as soon as it has forked, and lets
the kernel reap the guards that end (``SIGCHLD`` ignored).

An agent keeps two kinds of server: the bare one (``python -I -S``, for
shell and R programs) and, for Python programs, a *zygote* per interpreter
and start-up environment (``_zygote.py``), whose guards fork the program
itself instead of starting a new interpreter.

A server reads requests until its socket closes, which happens when the
agent's process ends, however it ends: it then exits. A request the server
cannot take (it died, say) is started the old way, as a script; so is every
guard of a process that did not ``enable`` the server (unit tests that
supervise a program from the test process itself).

Standard library only, run as ``_standalone.command("cmlray._forkserver", SOCKET_FD)``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from cmlray import _guard, _proctree, _standalone, _zygote

# The agent's side (``GuardStarter``, ``start_guards``) imports ``subprocess`` where it
# runs it: the servers (a zygote among them) import this module as they boot, and
# do not need it (3 ms of a zygote's start).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

_MAX_FDS = 16
_LOWEST_FREE_FD = 3
_WINDOW = 32  # requests sent ahead of their answers (a batch of hundreds is pipelined)


def exec_guard(fds: Sequence[int]) -> None:
    """Start a guard as its own interpreter (the fallback); returns once it detached.

    Raises OSError when it could not start, or ended before it detached.
    """
    import subprocess

    argv = _standalone.command("cmlray._guard", *map(str, fds))
    try:
        subprocess.run(argv, pass_fds=tuple(fds), stdin=subprocess.DEVNULL, check=True)
    except subprocess.CalledProcessError as exc:
        raise OSError(str(exc)) from exc


class GuardStarter:
    """The agent's side: starts guards through its fork server (thread-safe).

    ``zygote``: the server is the zygote of these programs (``_zygote.py``),
    not the bare interpreter.
    """

    def __init__(self, zygote: _zygote.Key | None = None) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self.zygote = zygote
        self.forked_any = False

    def start(self, batch: Sequence[Sequence[int]]) -> int:
        """Start a guard on each fd set of ``batch``; returns how many the server forked.

        The requests are pipelined (``_WINDOW`` ahead of the answers). Those the
        server did not take (it died, say) are left to the caller. An empty
        batch only makes sure the server runs.
        """
        with self._lock:
            done = sent = 0
            try:
                sock = self._connected()
                while done < len(batch):
                    while sent < len(batch) and sent - done < _WINDOW:
                        fds = list(batch[sent])
                        socket.send_fds(sock, [json.dumps(len(fds)).encode()], fds)
                        sent += 1
                    if sock.recv(1) != b"k":
                        raise OSError("the fork server ended")
                    done += 1
                    self.forked_any = True
            except OSError:
                self._close()
            return done

    def _connected(self) -> socket.socket:
        import subprocess

        if self._sock is None:
            ours, theirs = socket.socketpair()
            fd = theirs.fileno()
            argv, env = _standalone.command("cmlray._forkserver", str(fd)), None
            if self.zygote is not None:
                argv, env = _zygote.zygote_command(self.zygote, _standalone.PACKAGE_ROOT, fd)
            self._server = subprocess.Popen(
                argv, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if self.zygote else None,
            )  # fmt: skip
            theirs.close()
            self._sock = ours
        return self._sock

    def _close(self) -> None:
        import subprocess

        if self._sock is not None:
            self._sock.close()
        if self._server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=1)
        self._sock = self._server = None

    close = _close


_starter: GuardStarter | None = None
# One zygote per interpreter and start-up environment; None: it could not start.
_zygotes: dict[_zygote.Key, GuardStarter | None] = {}
_zygotes_lock = threading.Lock()


def enable() -> None:
    """Start this process's guards through a fork server (a node agent calls it once)."""
    global _starter
    if _starter is None:
        _starter = GuardStarter()


def close_all() -> None:
    """End every server of this process (tests; an agent's end closes them anyway)."""
    global _starter
    for starter in [_starter, *_zygotes.values()]:
        if starter is not None:
            starter.close()
    _starter = None
    _zygotes.clear()


def prestart(zygote: _zygote.Key | None = None) -> None:
    """Start the fork server (and ``zygote``) now, so that the first worker does not wait."""
    if _starter is not None:
        _starter.start([])
        if zygote is not None:
            _start_from_zygote(zygote, [])


def start_guards(
    batch: Sequence[Sequence[int]], zygote: _zygote.Key | None = None
) -> list[OSError | None]:
    """Start a guard on each fd set: forked if ``enable`` was called, else as scripts.

    ``zygote``: these guards' programs can be forked from that zygote; the
    guards come from it while it can start them, else from the bare server.
    Returns, for each, None once the guard has its fds, or the error that kept
    it from starting (a node limit: no more processes, say).
    """
    forked = 0
    if zygote is not None and _starter is not None:
        forked = _start_from_zygote(zygote, batch)
    if _starter is not None and forked < len(batch):
        forked += _starter.start(batch[forked:])
    errors: list[OSError | None] = [None] * forked
    for fds in batch[forked:]:  # the server is gone, or there is none: as scripts
        try:
            exec_guard(fds)
            errors.append(None)
        except OSError as exc:
            errors.append(exc)
    return errors


def _start_from_zygote(key: _zygote.Key, batch: Sequence[Sequence[int]]) -> int:
    """Fork what the zygote of ``key`` can; one that never forked a guard is not tried again."""
    with _zygotes_lock:
        if key not in _zygotes:
            _zygotes[key] = GuardStarter(zygote=key)
        starter = _zygotes[key]
    if starter is None:
        return 0
    forked = starter.start(batch)
    if forked < len(batch) and not starter.forked_any:  # it cannot start here (a broken site)
        starter.close()
        _zygotes[key] = None
    return forked


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
    gc.disable()  # a collection would write to every object the guard shares with the server
    sock.close()
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the guard waits for its program
        code = _guard.main(["_guard", *map(str, _renumber(received))], forked=True)
    finally:
        os._exit(code)


def _refuse(ctl_fd: int, exc: OSError) -> None:
    """Tell a guard's agent, on the guard's control socket, that it could not be forked."""
    words = _proctree.limit_error(exc) or f"fork failed: {exc}"
    message = json.dumps({"error": f"cannot start its guard: {words}"}) + "\n"
    with contextlib.suppress(OSError):
        os.write(ctl_fd, message.encode())


def _warm() -> None:
    """Do once, in the server, what every guard would do: its forks share the result.

    libc's ``prctl`` is looked up; every object made so far is frozen out of
    the garbage collector's reach, so that no collection in a guard writes to
    (and so copies) the pages it shares with the server.
    """
    _proctree._prctl()
    gc.collect()
    gc.freeze()


def serve(sock: socket.socket) -> int:
    """Fork a guard for each request until the agent's end of ``sock`` closes."""
    os.chdir("/")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # ended guards are reaped by the kernel
    _warm()
    while True:
        try:
            message, received, _flags, _addr = socket.recv_fds(sock, 4096, _MAX_FDS)
        except OSError:
            return 0
        if not message:
            return 0
        try:
            if os.fork() == 0:
                _child(sock, received)
        except OSError as exc:  # the node's limits: the guard's agent reads why on its socket
            _refuse(received[0], exc)
        for fd in received:
            os.close(fd)
        try:
            sock.sendall(b"k")
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(serve(socket.socket(fileno=int(sys.argv[1]))))
