"""A worker's program as an operating-system process: argv, spawn, stop.

Standard library only, and no import of the rest of cmlray: the guard
(``_guard.py``) loads this file by path in a bare ``python -I -S``, so it
starts in milliseconds and cannot be broken by the user's environment.

Stopping is an escalation ladder on the whole tree: SIGTERM to the program's
process group and to every descendant (setsid'd ones too, since the guard is
a child subreaper and so inherits every orphan), a grace period, then SIGKILL
to whatever is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SHELL_PREFIX = "!"
# Stands for the node's own interpreter in a command line built by the
# session: the node that runs the program puts its sys.executable there.
NODE_PYTHON = "{node-python}"
_POLL_S = 0.02


def shell_path() -> str:
    """The shell that runs ``!`` commands: bash as in CML, else sh."""
    return shutil.which("bash") or "/bin/sh"


def is_shell_code(code: str) -> bool:
    """True when every non-blank line of ``code`` is a ``!`` shell line."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith(SHELL_PREFIX) for line in lines)


def shell_script(code: str) -> str:
    """The ``!`` lines of ``code`` without their ``!``, one command a line."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return "\n".join(line[len(SHELL_PREFIX) :] for line in lines)


_SYSTEM_HELPER = (
    "def __cmlray_system(cmd):\n"
    "    import subprocess, sys\n"
    "    sys.stdout.flush(); sys.stderr.flush()\n"
    "    return subprocess.run(cmd, shell=True, executable={shell!r}).returncode\n"
)


def python_with_shell_lines(code: str) -> str:
    """IPython's rule for Python code holding ``!cmd`` lines.

    Each ``!cmd`` line becomes a call that runs ``cmd`` in the shell, at the
    same indentation, so ``for`` loops and ``if`` blocks keep working.
    """
    if not any(line.lstrip().startswith(SHELL_PREFIX) for line in code.splitlines()):
        return code
    out = [_SYSTEM_HELPER.format(shell=shell_path())]
    for line in code.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(SHELL_PREFIX):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}__cmlray_system({stripped[len(SHELL_PREFIX) :]!r})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


CODE_FILENAME = "<worker code>"
# Runs code given as the next argument under a file name whose lines
# tracebacks can show (``python -c`` shows none).
_CODE_RUNNER = (
    "import linecache, sys; __s = sys.argv.pop(1); "
    f"linecache.cache[{CODE_FILENAME!r}] = "
    f"(len(__s), None, __s.splitlines(True), {CODE_FILENAME!r}); "
    f"del linecache; exec(compile(__s, {CODE_FILENAME!r}, 'exec'))"
)


# Runs R code given as the next argument as Rscript runs a file: top-level
# autoprint, "Error: ..." and exit status 1 on error. ``Rscript -e`` would
# mangle code containing "~+~" and silently run garbage past about 10 kB
# (measured with R 4.2), so the code reaches R as a file: a here-string on fd 3.
_R_CODE_RUNNER = 'exec Rscript /dev/fd/3 3<<<"$1"'


def r_code_argv(code: str) -> list[str]:
    """The command line that runs R source ``code`` with ``Rscript``."""
    bash = shutil.which("bash")
    if bash is None:  # no here-strings in a POSIX sh: fall back to -e
        return ["Rscript", "-e", code]
    return [bash, "-c", _R_CODE_RUNNER, "Rscript", code]


def build_argv(*, kernel: str, script: str, code: str, python: str) -> list[str]:
    """The command line that runs a worker's program.

    Args:
        kernel: ``"python3"`` or ``"r"`` (already validated).
        script: absolute path of a script, or "" when ``code`` is used.
        code: Python (or R) source; ``!`` lines are shell commands.
        python: the interpreter that runs Python programs.
    """
    if script:
        return [python, "-u", script] if kernel == "python3" else ["Rscript", script]
    if is_shell_code(code):
        return [shell_path(), "-c", shell_script(code)]
    if kernel == "r":
        return r_code_argv(code)
    return [python, "-u", "-c", _CODE_RUNNER, python_with_shell_lines(code)]


def resolve_argv(argv: Sequence[str], python: str) -> list[str]:
    """``argv`` as this node runs it: its interpreter, its shell."""
    resolved = [python if arg == NODE_PYTHON else arg for arg in argv]
    first = resolved[0] if resolved else ""
    if os.path.basename(first) in ("bash", "sh") and not os.path.exists(first):
        resolved[0] = shell_path()  # the session's bash may live elsewhere here
    return resolved


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Make this process inherit its descendants' orphans (Linux only)."""
    try:
        return bool(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _child_setup() -> None:
    """Runs in the program's process between fork and exec."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str,
    stdout_fd: int,
    stderr_fd: int,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a program in its own session and process group.

    The program gets SIGKILL if its parent (the guard) dies, and default
    signal dispositions whatever the parent ignored.
    """
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout_fd,
        stderr=stderr_fd,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_child_setup,  # noqa: PLW1509 - the guard is single threaded
        close_fds=True,
        pass_fds=tuple(pass_fds),
    )


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), zombies included."""
    children = _parent_map()
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _signal_all(pids: Sequence[int], pgid: int | None, signum: int) -> None:
    if pgid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signum)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


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


def _live(pids: Sequence[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
            alive.append(pid)
    return alive


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
    _signal_all(descendants(root_pid), pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_period_s
    while True:
        on_reaped(reap_children())
        remaining = _live(descendants(root_pid))
        if not remaining:
            return False
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    while remaining:
        _signal_all(remaining, pgid, signal.SIGKILL)
        time.sleep(_POLL_S)
        on_reaped(reap_children())
        remaining = _live(descendants(root_pid))
    return True


def describe_status(status: int) -> tuple[int, str]:
    """A wait status as (exit code, words); a signal gives a negative code."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return -signum, f"killed by {signal.Signals(signum).name}"
    code = os.WEXITSTATUS(status)
    return code, f"exit code {code}"


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of every live descendant of ``root_pid``, summed."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in descendants(root_pid):
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells pids apart)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def holders_of(directory: str) -> list[int]:
    """Processes of this user with a file, or their cwd, under ``directory``."""
    prefix = os.path.realpath(directory) + os.sep
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            links = [os.readlink(f"/proc/{entry}/cwd")]
            fd_dir = f"/proc/{entry}/fd"
            links += [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry))
    return found
