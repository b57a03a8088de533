"""A worker's program as a tree of operating-system processes: spawn, reap, stop.

Stopping is an escalation ladder on the whole tree: SIGTERM to the
program's process group and to every descendant of its guard (setsid'd ones
too, since the guard is a child subreaper and so inherits every orphan), a
grace period, then SIGKILL to whatever is left.

Standard library only (see ``_standalone.py``): the guard runs it in a bare
interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import time
from collections.abc import Callable, Sequence

from cmlray import _procfs

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 0.02


@functools.cache
def _prctl() -> Callable[..., int]:
    """libc's ``prctl``, looked up once (in the fork server, before the guards are forked)."""
    return ctypes.CDLL(None, use_errno=True).prctl


def become_subreaper() -> bool:
    """Make this process inherit its descendants' orphans (Linux only)."""
    try:
        return bool(_prctl()(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def child_setup(niceness: int | None = None) -> None:
    """Runs in the program's process between fork and exec; ``niceness``: its priority.

    A priority above the guard's needs the right to raise it (root,
    ``CAP_SYS_NICE``): without it the program keeps the guard's.
    """
    if niceness is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    with contextlib.suppress(OSError, AttributeError):
        _prctl()(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)


class Spawned:
    """A started program: what the guard needs of it, its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str,
    stdout_fd: int,
    stderr_fd: int,
    pass_fds: Sequence[int] = (),
    niceness: int | None = None,
) -> Spawned:
    """Start a program in its own session and process group.

    The program gets SIGKILL if its parent (the guard) dies, default signal
    dispositions whatever the parent ignored, stdin ``/dev/null``, and no
    descriptor but its outputs and ``pass_fds``. A failed ``chdir`` or
    ``exec`` is raised here, as ``subprocess`` does (an error pipe closed on
    exec), but with a plain fork: ``subprocess.Popen`` made each guard write
    about 0.5 MiB more of the pages it shares with its fork server.
    """
    err_r, err_w = os.pipe()  # close-on-exec: EOF once the program runs
    try:
        pid = os.fork()
        if pid == 0:
            _exec_child(argv, env, cwd, (stdout_fd, stderr_fd), pass_fds, err_w, niceness)
    except BaseException:
        os.close(err_r)
        raise
    finally:
        os.close(err_w)
    with os.fdopen(err_r, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        number, _, filename = failure.decode(errors="replace").partition(":")
        raise OSError(int(number), os.strerror(int(number)), filename or None)
    return Spawned(pid)


def _exec_child(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str,
    outputs: tuple[int, int],
    pass_fds: Sequence[int],
    err_w: int,
    niceness: int | None,
) -> None:
    """In the child: set up, then exec; never returns (the error goes to ``err_w``)."""
    try:
        enter_program(outputs, pass_fds, niceness, keep=(err_w,))
        os.chdir(cwd)
        os.execvpe(argv[0], list(argv), env)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(err_w, f"{exc.errno or 0}:{exc.filename or ''}".encode())
    finally:
        os._exit(127)


def enter_program(
    outputs: tuple[int, int],
    pass_fds: Sequence[int],
    niceness: int | None,
    keep: Sequence[int] = (),
) -> None:
    """In a fork that becomes a program (exec'd here, or forked from a zygote).

    Its own session, ``child_setup``, stdin ``/dev/null``, stdout and stderr
    ``outputs``, ``pass_fds`` kept (inheritable), every other descriptor
    closed but ``keep``.
    """
    os.setsid()
    child_setup(niceness)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for target, fd in enumerate((devnull, *outputs)):
        os.dup2(fd, target)
    wanted = {0, 1, 2, *keep, *pass_fds}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in wanted:
            with contextlib.suppress(OSError):
                os.close(int(name))
    for fd in pass_fds:
        os.set_inheritable(fd, True)


def reap_children() -> dict[int, int]:
    """Collect every exited child without blocking: {pid: wait status}."""
    reaped: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped[pid] = status


def _signal_all(pids: Sequence[int], pgid: int | None, signum: int) -> None:
    if pgid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signum)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def terminate_tree(
    root_pid: int,
    pgid: int | None,
    grace_period_s: float,
    on_reaped: Callable[[dict[int, int]], None] = lambda _r: None,
) -> bool:
    """SIGTERM every descendant of ``root_pid``, wait, then SIGKILL the rest.

    Args:
        root_pid: the process whose descendants die (the guard: itself spared).
        pgid: the program's process group, signalled as a whole as well.
        grace_period_s: how long the tree may take to exit after SIGTERM.
        on_reaped: told of each child reaped meanwhile (pid -> wait status).

    Returns:
        True if SIGKILL was needed.
    """
    _signal_all(_procfs.descendants(root_pid), pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_period_s
    while True:
        on_reaped(reap_children())
        remaining = _procfs.alive(_procfs.descendants(root_pid))
        if not remaining:
            return False
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    while remaining:
        _signal_all(remaining, pgid, signal.SIGKILL)
        time.sleep(_POLL_S)
        on_reaped(reap_children())
        remaining = _procfs.alive(_procfs.descendants(root_pid))
    return True


def describe_status(status: int) -> tuple[int, str]:
    """A wait status as (exit code, words); a signal gives a negative code."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return -signum, f"killed by {signal.Signals(signum).name}"
    code = os.WEXITSTATUS(status)
    return code, f"exit code {code}"


# What the errors of fork and exec mean on a node running many workers.
LIMIT_WORDS = {
    errno.EAGAIN: "the node's limit on processes was reached (ulimit -u, pids.max)",
    errno.EMFILE: "{who} has too many open files (ulimit -n)",
    errno.ENFILE: "the node's table of open files is full (fs.file-max)",
    errno.ENOMEM: "the node is out of memory",
}


def limit_error(exc: OSError, who: str = "its guard") -> str | None:
    """The words for an error that means a node limit was reached (by ``who``), else None."""
    words = LIMIT_WORDS.get(exc.errno or 0)
    return f"{words.format(who=who)} ({exc.strerror})" if words else None
